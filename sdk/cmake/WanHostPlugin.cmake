# wanhost_add_plugin(<name> SOURCES <src>... MANIFEST <name>.json [LINK_LIBRARIES <lib>...]
#                    [NO_INSTALL])
#
# Builds a wanhost plugin: a shared object named exactly <name>.so with hidden visibility (only
# the ABI tag and the entry point are exported) and --no-undefined (a missing symbol fails the
# link, not the training run), plus its sidecar manifest copied beside it as <name>.json.
# Inside the wanhost tree, plugins land in build/plugins/; elsewhere in the caller's binary dir
# (or WANHOST_PLUGIN_OUTPUT_DIR when set). `cmake --install` puts NAME.so and NAME.json into
# WANHOST_INSTALL_PLUGINDIR under the install prefix (lib/wanhost/plugins: with the prefix /usr,
# where the packaged wanhost finds them without any variable), unless NO_INSTALL is given.
function(wanhost_add_plugin name)
  cmake_parse_arguments(ARG "NO_INSTALL" "MANIFEST" "SOURCES;LINK_LIBRARIES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "wanhost_add_plugin(${name}): SOURCES is required")
  endif()
  if(NOT ARG_MANIFEST)
    message(FATAL_ERROR "wanhost_add_plugin(${name}): MANIFEST <file.json> is required")
  endif()
  if(NOT name MATCHES "^[a-z][a-z0-9_]*$")
    message(FATAL_ERROR "wanhost_add_plugin: plugin name '${name}' must match [a-z][a-z0-9_]*")
  endif()
  if(NOT WANHOST_PLUGIN_OUTPUT_DIR)
    set(WANHOST_PLUGIN_OUTPUT_DIR ${CMAKE_CURRENT_BINARY_DIR})
  endif()
  add_library(${name} MODULE ${ARG_SOURCES})
  set_property(GLOBAL APPEND PROPERTY WANHOST_PLUGIN_TARGETS ${name})
  target_link_libraries(${name} PRIVATE WanHost::sdk ${ARG_LINK_LIBRARIES})
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    CUDA_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    LIBRARY_OUTPUT_DIRECTORY ${WANHOST_PLUGIN_OUTPUT_DIR})
  target_link_options(${name} PRIVATE "LINKER:--no-undefined")
  if(WANHOST_FMT_SHIM AND NOT TARGET wanhost_sdk)
    # Before LibTorch's bundled {fmt} (see WanHostConfig.cmake / the top-level CMakeLists.txt).
    target_include_directories(${name} BEFORE PRIVATE ${WANHOST_FMT_SHIM})
  endif()
  if(WANHOST_WARNINGS)
    target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${WANHOST_WARNINGS}>)
  endif()
  get_filename_component(manifest "${ARG_MANIFEST}" ABSOLUTE)
  # The sidecar copy is an output of its own that depends on the manifest, so that editing only
  # the JSON updates the copy beside the .so on the next build.
  set(sidecar "${WANHOST_PLUGIN_OUTPUT_DIR}/${name}.json")
  add_custom_command(OUTPUT "${sidecar}"
    COMMAND ${CMAKE_COMMAND} -E copy_if_different "${manifest}" "${sidecar}"
    DEPENDS "${manifest}" VERBATIM)
  target_sources(${name} PRIVATE "${sidecar}")
  if(NOT ARG_NO_INSTALL AND WANHOST_INSTALL_PLUGINDIR)
    if(TARGET wanhost_sdk AND CMAKE_INSTALL_LIBDIR)
      # Inside the wanhost tree: installed plugins find libwanhost_sdk relative to themselves.
      file(RELATIVE_PATH rel /${WANHOST_INSTALL_PLUGINDIR} /${CMAKE_INSTALL_LIBDIR})
      string(REGEX REPLACE "/$" "" rel "${rel}")
      set_target_properties(${name} PROPERTIES INSTALL_RPATH "$ORIGIN/${rel}")
    endif()
    install(TARGETS ${name} LIBRARY DESTINATION ${WANHOST_INSTALL_PLUGINDIR} COMPONENT wanhost)
    install(FILES "${manifest}" DESTINATION ${WANHOST_INSTALL_PLUGINDIR} RENAME ${name}.json
            COMPONENT wanhost)
  endif()
endfunction()

# wanhost_clean_link_directories()
#
# LibTorch's CMake files give some imported targets link folders that do not exist (caffe2::mkl
# lists ${MKL_ROOT}/lib/intel64, ... with MKL_ROOT empty) or are empty; CMake copies link folders
# into the RUNPATH of what it builds, and an empty entry means "the current directory". This keeps
# only existing folders on the imported targets of the calling directory (call it after
# find_package(Torch); the WanHost package calls it itself).
function(wanhost_clean_link_directories)
  get_property(imported DIRECTORY PROPERTY IMPORTED_TARGETS)
  foreach(t IN LISTS imported)
    get_target_property(dirs ${t} INTERFACE_LINK_DIRECTORIES)
    if(NOT dirs)
      continue()
    endif()
    set(kept)
    foreach(d IN LISTS dirs)
      if(NOT d STREQUAL "" AND IS_DIRECTORY "${d}")
        list(APPEND kept "${d}")
      endif()
    endforeach()
    set_property(TARGET ${t} PROPERTY INTERFACE_LINK_DIRECTORIES "${kept}")
  endforeach()
endfunction()
