# Installation layout and the DEB / RPM packages (cpack in the build folder; docs/install.md).
#
# Two components, two packages per format:
#   wanhost      -> wanhost (DEB, RPM): the launcher bin/wanhost, the real program
#                   lib/wanhost/wanhost, libwanhost.so.1, libwanhost_sdk.so.2 (the SDK contract),
#                   libwanhost_kit.so.1 (the SDK toolkit), the built-in plugins
#                   and their manifests in lib/wanhost/plugins, the recipes in share/wanhost,
#                   the documentation in share/doc/wanhost;
#   dev          -> wanhost-dev (DEB) / wanhost-devel (RPM): the SDK headers, the link
#                   links libwanhost_sdk.so and libwanhost_kit.so, the CMake package WanHost (with wanhost_add_plugin) and the
#                   example plugin; it depends on exactly the same wanhost version.
# Every installed ELF file finds wanhost's own libraries through a RUNPATH relative to $ORIGIN.
# LibTorch is not a distribution package: bin/wanhost finds and checks it at start-up
# (packaging/wanhost-launcher.sh.in) and puts its lib/ folder on the library path.

# --- installation rules -------------------------------------------------------------------------
file(RELATIVE_PATH _wanhost_host_to_lib /${WANHOST_INSTALL_HOSTDIR} /${CMAKE_INSTALL_LIBDIR})
string(REGEX REPLACE "/$" "" _wanhost_host_to_lib "${_wanhost_host_to_lib}")
set_target_properties(wanhost PROPERTIES INSTALL_RPATH "$ORIGIN/${_wanhost_host_to_lib}")
set_target_properties(wanhost_core PROPERTIES INSTALL_RPATH "$ORIGIN")
set_target_properties(wanhost_kit PROPERTIES INSTALL_RPATH "$ORIGIN")  # finds libwanhost_sdk beside it
install(TARGETS wanhost RUNTIME DESTINATION ${WANHOST_INSTALL_HOSTDIR} COMPONENT wanhost)
# libwanhost is the host's own library, not an API: no development link.
install(TARGETS wanhost_core LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT wanhost NAMELINK_SKIP)

# The launcher that users run.
set(WANHOST_INSTALL_DOCDIR ${CMAKE_INSTALL_DATADIR}/doc/wanhost)
set(WANHOST_WITH_CUDA_01 0)
if(WANHOST_WITH_CUDA)
  set(WANHOST_WITH_CUDA_01 1)
endif()
# The CUDA runtime's soname (libcudart.so.13) that the CUDA code links; the launcher checks it.
set(WANHOST_CUDART_SONAME "")
if(WANHOST_WITH_CUDA AND CUDAToolkit_VERSION_MAJOR)
  set(WANHOST_CUDART_SONAME libcudart.so.${CUDAToolkit_VERSION_MAJOR})
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/wanhost-launcher.sh.in
               ${CMAKE_BINARY_DIR}/packaging/wanhost-launcher.sh @ONLY)
install(PROGRAMS ${CMAKE_BINARY_DIR}/packaging/wanhost-launcher.sh DESTINATION ${CMAKE_INSTALL_BINDIR}
        RENAME wanhost COMPONENT wanhost)

# Recipes (the default one is also compiled into the program) and documentation.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/configs/ DESTINATION ${WANHOST_INSTALL_DATADIR}
        COMPONENT wanhost FILES_MATCHING PATTERN "*.json")
install(FILES ${PROJECT_SOURCE_DIR}/README.md DESTINATION ${WANHOST_INSTALL_DOCDIR} COMPONENT wanhost)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/docs/ DESTINATION ${WANHOST_INSTALL_DOCDIR}
        COMPONENT wanhost FILES_MATCHING PATTERN "*.md")
install(DIRECTORY ${CMAKE_CURRENT_LIST_DIR}/example-plugin/
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/wanhost-dev/example-plugin COMPONENT dev)

# --- packages ----------------------------------------------------------------------------------
set(WANHOST_PACKAGE_CONTACT "wanhost maintainers <wanhost@localhost>" CACHE STRING
    "Maintainer / packager named in the DEB and RPM packages")
set(WANHOST_PACKAGE_RELEASE 1 CACHE STRING "Package release number (the -N after the version)")

set(CPACK_PACKAGE_NAME wanhost)
set(CPACK_PACKAGE_VENDOR wanhost)
set(CPACK_PACKAGE_CONTACT "${WANHOST_PACKAGE_CONTACT}")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_GENERATOR DEB RPM)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_COMPONENTS_ALL wanhost dev)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_RPM_COMPONENT_INSTALL ON)
set(_wanhost_full_version ${PROJECT_VERSION}-${WANHOST_PACKAGE_RELEASE})

# Debian: wanhost_0.1.0-1_amd64.deb, wanhost-dev_0.1.0-1_amd64.deb.
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${WANHOST_PACKAGE_RELEASE})
set(CPACK_DEBIAN_WANHOST_PACKAGE_NAME wanhost)
set(CPACK_DEBIAN_WANHOST_PACKAGE_SECTION science)
set(CPACK_DEBIAN_DEV_PACKAGE_NAME wanhost-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
# Runtime dependencies come from dpkg-shlibdeps (spdlog, fmt, libstdc++, and whatever the plugins
# link). LibTorch is no Debian package: dpkg-shlibdeps finds it in the build's LibTorch folder and
# leaves it out (--ignore-missing-info); bin/wanhost checks for it at start-up instead.
set(CPACK_DEBIAN_WANHOST_PACKAGE_SHLIBDEPS ON)
# (The torch wheel keeps the CUDA libraries in sibling folders, site-packages/nvidia/*/lib.)
file(GLOB _wanhost_wheel_cuda_dirs LIST_DIRECTORIES true ${TORCH_INSTALL_PREFIX}/../nvidia/*/lib)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${TORCH_INSTALL_PREFIX}/lib ${_wanhost_wheel_cuda_dirs})
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)  # shlibs file and the ldconfig trigger
# PLplot loads its PNG driver at run time (no shared-library dependency shows it): `wanhost
# compare` draws its plots with it.
set(CPACK_DEBIAN_WANHOST_PACKAGE_RECOMMENDS "plplot-driver-cairo")
# Plugins packaged by others then depend on "wanhost (>= the version they were built with)": SDK
# minors only add, and the soname carries the major.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
    "wanhost (= ${_wanhost_full_version}), nlohmann-json3-dev (>= 3.10), libspdlog-dev, libfmt-dev, cmake (>= 3.25)")
set(CPACK_DEBIAN_DEV_PACKAGE_SHLIBDEPS OFF)

# RPM: wanhost-0.1.0-1.x86_64.rpm, wanhost-devel-0.1.0-1.x86_64.rpm.
set(CPACK_RPM_FILE_NAME RPM-DEFAULT)
set(CPACK_RPM_PACKAGE_RELEASE ${WANHOST_PACKAGE_RELEASE})
set(CPACK_RPM_PACKAGE_GROUP "Applications/Engineering")
set(CPACK_RPM_WANHOST_PACKAGE_NAME wanhost)
set(CPACK_RPM_DEV_PACKAGE_NAME wanhost-devel)
set(CPACK_RPM_DEV_PACKAGE_GROUP "Development/Libraries")
set(CPACK_RPM_DEV_PACKAGE_REQUIRES
    "wanhost = ${_wanhost_full_version}, json-devel >= 3.10, spdlog-devel, fmt-devel, cmake >= 3.25")
# Automatic requirements, except LibTorch's libraries, the CUDA runtime and cuBLASLt (bin/wanhost finds them
# in the LibTorch installation; no distribution RPM provides them); no automatic
# "provides" for the plugins (they are not libraries for other packages to link); no
# /usr/lib/.build-id links (no debuginfo packages are made), so both formats hold the same files.
set(CPACK_RPM_SPEC_MORE_DEFINE
    "%global __requires_exclude ^lib(torch|torch_cpu|torch_cuda|c10|c10_cuda|cudart|cublasLt)\\\\.so.*$
%global __provides_exclude_from ^/usr/${WANHOST_INSTALL_PLUGINDIR}/.*$
%define _build_id_links none")
# Folders that belong to the filesystem or to CMake, not to these packages.
set(CPACK_RPM_EXCLUDE_FROM_AUTO_FILELIST_ADDITION /usr/lib/cmake /usr/lib64/cmake /usr/share/doc)

include(CPack)
cpack_add_component(wanhost DISPLAY_NAME "wanhost"
  DESCRIPTION "Wan 2.1 text-to-video DiT trainer: the wanhost program, its libraries, the built-in plugins and recipes. Needs LibTorch ${Torch_VERSION} (${WANHOST_TORCH_FLAVOR}), which is not packaged: see /usr/share/doc/wanhost/install.md.")
cpack_add_component(dev DISPLAY_NAME "wanhost SDK" DEPENDS wanhost
  DESCRIPTION "wanhost plugin SDK: headers, the CMake package WanHost (find_package(WanHost 2): WanHost::sdk, WanHost::kit, wanhost_add_plugin()) and an example plugin. Plugins build against LibTorch ${Torch_VERSION} (${WANHOST_TORCH_FLAVOR}).")
