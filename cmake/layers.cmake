# The layers' rule, enforced by the build: a folder's sources may include only headers of its own
# folder and of the folders it names in shoal_layer(... DEPENDS ...), which are the folders of the
# targets it links. An include that reaches up (compute including comm/, ps/ including worker/)
# fails the build with the file, the line and the rule (target shoal_layers, part of `all`).
#   shoal_layer(FOLDER [DEPENDS FOLDER...])   in the folder's CMakeLists.txt
function(shoal_layer folder)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "DEPENDS")
  set_property(GLOBAL APPEND PROPERTY SHOAL_LAYERS "${folder}")
  set_property(GLOBAL PROPERTY "SHOAL_LAYER_DEPS_${folder}" "${arg_DEPENDS}")
endfunction()

# Writes the rules and adds the check; called once, after every layer is declared.
function(shoal_layer_check)
  get_property(layers GLOBAL PROPERTY SHOAL_LAYERS)
  set(rules "")
  set(inputs "")
  foreach(layer IN LISTS layers)
    get_property(deps GLOBAL PROPERTY "SHOAL_LAYER_DEPS_${layer}")
    string(REPLACE ";" "," deps_text "${deps}")
    string(APPEND rules "${layer}=${deps_text}\n")
    file(GLOB sources CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/${layer}/*.h" "${PROJECT_SOURCE_DIR}/${layer}/*.cc"
         "${PROJECT_SOURCE_DIR}/${layer}/*.cu")
    list(APPEND inputs ${sources})
  endforeach()
  file(WRITE "${PROJECT_BINARY_DIR}/layers.txt" "${rules}")
  add_custom_command(
    OUTPUT "${PROJECT_BINARY_DIR}/layers.checked"
    COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -DRULES=${PROJECT_BINARY_DIR}/layers.txt
            -DSTAMP=${PROJECT_BINARY_DIR}/layers.checked -P ${PROJECT_SOURCE_DIR}/cmake/check_layers.cmake
    DEPENDS ${inputs} "${PROJECT_BINARY_DIR}/layers.txt" "${PROJECT_SOURCE_DIR}/cmake/check_layers.cmake"
    COMMENT "Checking that every include points down the layers (docs/architecture.md)")
  add_custom_target(shoal_layers ALL DEPENDS "${PROJECT_BINARY_DIR}/layers.checked")
endfunction()
