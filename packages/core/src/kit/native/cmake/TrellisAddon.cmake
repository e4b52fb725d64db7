# Shared by every Trellis native backend: build a Node-API addon over the engine kit.
#
#   trellis_add_addon(<target> <sources...>)
#
# Node-API and node-addon-api headers come from cmake-js (CMAKE_JS_INC) and the node-addon-api
# package; on a machine prepared by shared/tools/device-prep.sh (no npm there) both come from
# $TRELLIS_DEVICE_INCLUDE. The kit's headers are the directory above this file.
#
# Every Trellis addon builds C++20, position-independent: set here once for the including project.
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
  add_library(${target} SHARED ${ARGN} ${CMAKE_JS_SRC})
  set_target_properties(${target} PROPERTIES PREFIX "" SUFFIX ".node")
  target_include_directories(${target} PRIVATE ${node_inc} ${addon_api_dir} ${TRELLIS_KIT_INCLUDE})
  target_compile_definitions(${target} PRIVATE NAPI_VERSION=8 NAPI_DISABLE_CPP_EXCEPTIONS
    NODE_ADDON_API_DISABLE_DEPRECATED NODE_GYP_MODULE_NAME=${target})
  target_compile_options(${target} PRIVATE -Wall -Wextra -O2 -fvisibility=hidden)
  find_package(Threads REQUIRED)
  target_link_libraries(${target} PRIVATE ${CMAKE_JS_LIB} Threads::Threads)
endfunction()
