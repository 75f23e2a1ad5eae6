# Cross-compiling segml's tests for aarch64 (ARM64) with Debian's g++-aarch64-linux-gnu.
# Run the result under qemu-user:  qemu-aarch64 -L /usr/aarch64-linux-gnu ./test_x
# Header-only dependencies (Eigen, doctest, nlohmann/json) are architecture independent and found
# in /usr; libraries (stb) are searched only in the aarch64 sysroot, so image I/O is off unless the
# arm64 libstb is installed there.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /usr)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/aarch64-linux-gnu)
