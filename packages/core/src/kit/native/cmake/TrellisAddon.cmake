# Shared by every Trellis native backend: build a Node-API addon over the engine kit.
#
#   trellis_add_addon(<target> <sources...>)
#
# Node-API and node-addon-api headers come from cmake-js (CMAKE_JS_INC) and the node-addon-api
# package; on a machine prepared by shared/tools/device-prep.sh (no npm there) both come from
# $TRELLIS_DEVICE_INCLUDE. The kit's headers are the directory above this file.
#
# Every Trellis addon builds C++20, position-independent, with the C++ runtime linked in: set here
# once for the including project.
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
get_filename_component(TRELLIS_KIT_INCLUDE "${CMAKE_CURRENT_LIST_DIR}/../include" ABSOLUTE)

function(trellis_add_addon target)
  if(DEFINED ENV{TRELLIS_DEVICE_INCLUDE})
    set(addon_api_dir $ENV{TRELLIS_DEVICE_INCLUDE})
    set(node_inc $ENV{TRELLIS_DEVICE_INCLUDE})
  else()
    execute_process(COMMAND node -p "require('node-addon-api').include_dir"
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE addon_api_dir OUTPUT_STRIP_TRAILING_WHITESPACE)
    set(node_inc ${CMAKE_JS_INC})
  endif()
  add_library(${target} SHARED ${ARGN} ${CMAKE_JS_SRC} ${TRELLIS_KIT_INCLUDE}/../src/glibc_compat.cc)
  set_target_properties(${target} PROPERTIES PREFIX "" SUFFIX ".node")
  # Other projects' headers as system headers: their warnings are not ours.
  target_include_directories(${target} SYSTEM PRIVATE ${node_inc} ${addon_api_dir})
  target_include_directories(${target} PRIVATE ${TRELLIS_KIT_INCLUDE})
  target_compile_definitions(${target} PRIVATE NAPI_VERSION=8 NAPI_DISABLE_CPP_EXCEPTIONS
    NODE_ADDON_API_DISABLE_DEPRECATED NODE_GYP_MODULE_NAME=${target})
  target_compile_options(${target} PRIVATE -Wall -Wextra -O2 -fvisibility=hidden)
  # -DTRELLIS_TRACE=ON: mark every step of the engine on a timeline (trellis/trace.hpp), for
  # scripts/trace-timeline.mjs. Off by default: the marks are then no code at all.
  if(TRELLIS_TRACE)
    target_compile_definitions(${target} PRIVATE TRELLIS_TRACE)
  endif()
  find_package(Threads REQUIRED)
  target_link_libraries(${target} PRIVATE ${CMAKE_JS_LIB} Threads::Threads)
  # The C++ runtime inside the addon, its symbols kept private (libgcc_s stays shared: every glibc
  # system has it): built on Debian 12, the binary loads on any Linux with glibc >= 2.34 whatever
  # libstdc++ it has (prebuilt binaries: scripts/prebuild.sh), next to other addons with their own.
  # Node-API's two entry points are all it exports (addon.map).
  target_link_options(${target} PRIVATE -static-libstdc++ -Wl,--exclude-libs,ALL -Wl,--as-needed
    -Wl,--version-script=${CMAKE_CURRENT_FUNCTION_LIST_DIR}/addon.map)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-fno-gnu-unique>)
endfunction()

# trellis_optional_cuda(<var>): where CMake finds nvcc, enable CUDA for the including project —
# native Hopper code (sm_90a) plus PTX for compute 7.5 that the driver JIT-compiles for any other
# GPU, unless CMAKE_CUDA_ARCHITECTURES is given — and set <var> TRUE; else set it FALSE. A macro, so
# enable_language applies to the caller's directory. Link CUDA::cudart_static where TRUE: it loads
# the driver when first used, so the addon still loads on hosts without one.
macro(trellis_optional_cuda var)
  # -DTRELLIS_NO_CUDA=ON builds without it even where nvcc exists (a cross build: nvcc here targets
  # this machine's architecture only).
  if(NOT TRELLIS_NO_CUDA)
    include(CheckLanguage)
    check_language(CUDA)
  endif()
  if(CMAKE_CUDA_COMPILER AND NOT TRELLIS_NO_CUDA)
    # Before enable_language(CUDA), which otherwise fills in the compiler's own default.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "90a-real;75-virtual")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(CMAKE_CUDA_STANDARD 17)
    set(${var} TRUE)
    message(STATUS "${PROJECT_NAME}: CUDA ${CUDAToolkit_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")
  else()
    set(${var} FALSE)
    message(STATUS "${PROJECT_NAME}: no CUDA compiler; building without GPU support")
  endif()
endmacro()
