// The OpenMPI backend of the SDK communicator, for CPU ranks started with `mpirun`. Every
// operation is a non-blocking MPI call; Work::wait() polls it against the configured timeout, so
// a stuck or dead peer ends this rank with an error naming the operation instead of a hang.
#pragma once

#include "wanhost/communicator.hpp"

namespace wanhost::core {

// MPI_Init (once, MPI_THREAD_SERIALIZED) when this process was started by an MPI launcher;
// returns false when it was not (no OMPI_/PMIX_ variables) and nothing was initialised.
bool mpi_init_if_launched();
bool mpi_initialized();
// The communicator over MPI_COMM_WORLD; `timeout_s` bounds every wait.
CommunicatorPtr make_mpi_world(double timeout_s);
// At exit: MPI_Finalize after success (or a SIGTERM stop, exit code 75), MPI_Abort (ending every
// rank now) after a failure, so a failing rank never leaves the others waiting in a collective.
// No-op without MPI.
void mpi_shutdown(int exit_code);

}  // namespace wanhost::core
