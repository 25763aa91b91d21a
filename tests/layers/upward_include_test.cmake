cmake_minimum_required(VERSION 3.25)
# ctest Layers.AnUpwardIncludeFailsTheCheck: the layer check (cmake/check_layers.cmake) passes on
# the real tree, and fails, naming the file, the include and the rule, on a copy of two layers in
# which base/ includes a header of comm/ (an include that points up).
#   cmake -DSOURCE_DIR=... -DRULES=build/layers.txt -DCHECKER=... -DWORK=dir -P upward_include_test.cmake
file(MAKE_DIRECTORY ${WORK})
execute_process(COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${SOURCE_DIR} -DRULES=${RULES} -DSTAMP=${WORK}/real.stamp
                        -P ${CHECKER} RESULT_VARIABLE real_result ERROR_VARIABLE real_error)
if(NOT real_result EQUAL 0)
  message(FATAL_ERROR "the real tree fails the layer check:\n${real_error}")
endif()

file(REMOVE_RECURSE ${WORK}/tree)
file(MAKE_DIRECTORY ${WORK}/tree/base ${WORK}/tree/comm)
file(WRITE ${WORK}/tree/comm/transport.h "#pragma once\n")
file(WRITE ${WORK}/tree/base/log.cc "#include \"base/log.h\"\n#include <vector>\n  #  include \"comm/transport.h\"\n")
file(WRITE ${WORK}/tree/base/log.h "#pragma once\n")
file(WRITE ${WORK}/rules.txt "base=\ncomm=base\n")
execute_process(COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${WORK}/tree -DRULES=${WORK}/rules.txt -DSTAMP=${WORK}/bad.stamp
                        -P ${CHECKER} RESULT_VARIABLE bad_result ERROR_VARIABLE bad_error)
if(bad_result EQUAL 0)
  message(FATAL_ERROR "base/log.cc includes comm/transport.h, and the layer check passed")
endif()
string(FIND "${bad_error}" "base/log.cc includes \"comm/transport.h\": layer base may include only base" at)
if(at EQUAL -1)
  message(FATAL_ERROR "the layer check failed without naming the upward include:\n${bad_error}")
endif()
# The downward include alone passes.
file(WRITE ${WORK}/tree/base/log.cc "#include \"base/log.h\"\n")
file(WRITE ${WORK}/tree/comm/transport.cc "#include \"base/log.h\"\n#include \"comm/transport.h\"\n")
execute_process(COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${WORK}/tree -DRULES=${WORK}/rules.txt -DSTAMP=${WORK}/good.stamp
                        -P ${CHECKER} RESULT_VARIABLE good_result ERROR_VARIABLE good_error)
if(NOT good_result EQUAL 0)
  message(FATAL_ERROR "comm including base failed the layer check:\n${good_error}")
endif()
message(STATUS "an upward include fails the layer check; the real tree and a downward include pass")
