# SPDX-License-Identifier: Apache-2.0
# Every dependency comes from a Debian package (tools/setup.sh); nothing is downloaded at build time.
find_package(Torch REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(spdlog REQUIRED)
find_package(fmt REQUIRED)
find_package(CLI11 REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(Eigen3 REQUIRED NO_MODULE)
find_package(ONNX REQUIRED)
find_package(ZLIB REQUIRED)
find_package(PNG REQUIRED)
find_package(Threads REQUIRED)
find_library(TURBOJPEG_LIBRARY NAMES turbojpeg REQUIRED)
find_path(TURBOJPEG_INCLUDE_DIR turbojpeg.h REQUIRED)
set(POCKETFLOW_HAVE_ONEDNN OFF)
if(POCKETFLOW_WITH_ONEDNN)
    find_path(DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.hpp)
    find_library(DNNL_LIBRARY NAMES dnnl)
    if(DNNL_INCLUDE_DIR AND DNNL_LIBRARY)
        set(POCKETFLOW_HAVE_ONEDNN ON)
        message(STATUS "oneDNN: ${DNNL_LIBRARY} (cached inference convolutions)")
    else()
        message(STATUS "oneDNN headers not found (libdnnl-dev): inference uses LibTorch's convolutions")
    endif()
endif()

# LibTorch's ABI flag (-D_GLIBCXX_USE_CXX11_ABI=...) must match everything we link with: Debian's
# yaml-cpp, spdlog and GTest are built with the new ABI, so a LibTorch built with the old one cannot link.
if(TORCH_CXX_FLAGS MATCHES "_GLIBCXX_USE_CXX11_ABI=0")
    message(FATAL_ERROR "LibTorch at ${TORCH_INSTALL_PREFIX} uses the pre-C++11 ABI "
                        "(${TORCH_CXX_FLAGS}); Debian's libraries use the new one. Use a cxx11-abi LibTorch.")
endif()
separate_arguments(POCKETFLOW_TORCH_FLAGS UNIX_COMMAND "${TORCH_CXX_FLAGS}")
