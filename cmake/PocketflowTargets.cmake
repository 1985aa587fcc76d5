# SPDX-License-Identifier: Apache-2.0
# Target helpers: warnings, sanitizers, learners and tests are declared through these.

function(pocketflow_set_target_options target)
    target_compile_options(${target} PRIVATE -Wall -Wextra ${POCKETFLOW_TORCH_FLAGS})
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
        target_compile_options(${target} PRIVATE -Wshadow=local)
    endif()
    if(POCKETFLOW_WARNINGS_AS_ERRORS)
        target_compile_options(${target} PRIVATE -Werror)
    endif()
    set(_san "")
    if(POCKETFLOW_SANITIZE_ADDRESS)
        list(APPEND _san address)
    endif()
    if(POCKETFLOW_SANITIZE_UNDEFINED)
        list(APPEND _san undefined)
    endif()
    if(POCKETFLOW_FUZZ)
        list(APPEND _san address undefined)
        list(REMOVE_DUPLICATES _san)
    endif()
    if(_san)
        list(JOIN _san "," _san_list)
        target_compile_options(${target} PRIVATE -fsanitize=${_san_list} -fno-sanitize-recover=all
                                                 -fno-omit-frame-pointer)
        target_link_options(${target} PRIVATE -fsanitize=${_san_list})
    endif()
    if(POCKETFLOW_FUZZ)
        # Coverage feedback for libFuzzer everywhere; no vptr checks (LibTorch's classes come from
        # a GCC build without them).
        target_compile_options(${target} PRIVATE -fsanitize=fuzzer-no-link -fno-sanitize=vptr)
    endif()
endfunction()

# pocketflow_add_learner(name SOURCES ...): a learner's object library, linked into pocketflow_core.
# Registration is explicit (learners/builtin.cpp), so nothing depends on static initialisers.
function(pocketflow_add_learner name)
    cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
    add_library(pocketflow_learner_${name} OBJECT ${ARG_SOURCES})
    target_link_libraries(pocketflow_learner_${name} PUBLIC pocketflow_deps)
    pocketflow_set_target_options(pocketflow_learner_${name})
    set_property(GLOBAL APPEND PROPERTY POCKETFLOW_LEARNERS ${name})
    target_sources(pocketflow_core PRIVATE $<TARGET_OBJECTS:pocketflow_learner_${name}>)
endfunction()
