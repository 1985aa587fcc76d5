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
# Debian 12 exports the targets as `onnx`/`onnx_proto`, Debian 13 as `ONNX::onnx`/`ONNX::onnx_proto`.
if(TARGET ONNX::onnx)
    set(POCKETFLOW_ONNX_LIBRARIES ONNX::onnx ONNX::onnx_proto)
else()
    set(POCKETFLOW_ONNX_LIBRARIES onnx onnx_proto)
endif()
find_package(ZLIB REQUIRED)
find_package(PNG REQUIRED)
find_package(Threads REQUIRED)
# ONNX's generated code calls protobuf: link Debian's libprotobuf by path (LibTorch 2.x's CMake
# config defines protobuf::libprotobuf as an empty target, which left it off the link line).
find_library(POCKETFLOW_PROTOBUF_LIBRARY NAMES protobuf PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}
             NO_DEFAULT_PATH)
find_library(POCKETFLOW_PROTOBUF_LIBRARY NAMES protobuf REQUIRED)
find_library(TURBOJPEG_LIBRARY NAMES turbojpeg REQUIRED)
find_path(TURBOJPEG_INCLUDE_DIR turbojpeg.h REQUIRED)
set(POCKETFLOW_HAVE_ONEDNN OFF)
if(POCKETFLOW_WITH_ONEDNN)
    find_path(DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.hpp)
    find_library(DNNL_LIBRARY NAMES dnnl)
    set(dnnl_major 0)
    if(DNNL_INCLUDE_DIR AND EXISTS ${DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h)
        file(STRINGS ${DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h dnnl_major_line
             REGEX "#define DNNL_VERSION_MAJOR")
        string(REGEX MATCH "[0-9]+" dnnl_major "${dnnl_major_line}")
    endif()
    if(DNNL_INCLUDE_DIR AND DNNL_LIBRARY AND NOT dnnl_major EQUAL 2)
        # The cached convolutions use oneDNN 2's API (Debian 12); oneDNN 3 (Debian 13) changed it.
        message(STATUS "oneDNN ${dnnl_major}.x found; the cached inference convolutions need 2.x: "
                       "inference uses LibTorch's convolutions")
    elseif(DNNL_INCLUDE_DIR AND DNNL_LIBRARY)
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

# The official LibTorch 2.x ships its own fmt and protobuf headers in the include directory it adds
# (-isystem). Compiled against those but linked with Debian's libfmt/libspdlog/libprotobuf, the code
# mixes two versions of one library (crashes in everything that formats a message or reads ONNX).
# A directory of links to Debian's copies, searched first (-I), pins the headers to the libraries.
set(POCKETFLOW_PINNED_INCLUDE_DIR ${CMAKE_BINARY_DIR}/pinned-include)
file(REMOVE_RECURSE ${POCKETFLOW_PINNED_INCLUDE_DIR})
set(POCKETFLOW_PINNED_HEADERS "")
foreach(pair "fmt;fmt/format.h" "spdlog;spdlog/spdlog.h" "google/protobuf;google/protobuf/message.h")
    list(GET pair 0 dir)
    list(GET pair 1 probe)
    get_filename_component(torch_include ${TORCH_INSTALL_PREFIX}/include REALPATH)
    if(NOT torch_include STREQUAL "/usr/include" AND EXISTS ${torch_include}/${dir}
       AND EXISTS /usr/include/${probe})
        get_filename_component(parent ${POCKETFLOW_PINNED_INCLUDE_DIR}/${dir} DIRECTORY)
        file(MAKE_DIRECTORY ${parent})
        file(CREATE_LINK /usr/include/${dir} ${POCKETFLOW_PINNED_INCLUDE_DIR}/${dir} SYMBOLIC)
        list(APPEND POCKETFLOW_PINNED_HEADERS ${dir})
    endif()
endforeach()
if(POCKETFLOW_PINNED_HEADERS)
    message(STATUS "LibTorch at ${TORCH_INSTALL_PREFIX} bundles ${POCKETFLOW_PINNED_HEADERS}: "
                   "Debian's headers are pinned first (${POCKETFLOW_PINNED_INCLUDE_DIR})")
endif()
