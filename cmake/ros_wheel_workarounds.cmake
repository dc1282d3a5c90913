# Two things that only go wrong when the ROS packages come from PyPI wheels in a venv. On a normal
# ROS install both functions change nothing.

# The wheels' exported CMake targets name include folders of the machine the wheels were built on
# (/opt/python/cp311-cp311/include/python3.11, a numpy include folder), and CMake refuses them at
# generate time ("Imported target ... includes non-existent path"). Drop the absolute entries that
# do not exist here; generator expressions are kept as they are.
function(molmo_ros_drop_missing_include_dirs)
  get_directory_property(_targets IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_kept "")
    set(_dropped FALSE)
    foreach(_dir IN LISTS _dirs)
      if(_dir MATCHES "\\$<" OR NOT IS_ABSOLUTE "${_dir}" OR EXISTS "${_dir}")
        list(APPEND _kept "${_dir}")
      else()
        set(_dropped TRUE)
      endif()
    endforeach()
    if(_dropped)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
    endif()
  endforeach()
endfunction()

# rosidl_generator_py gives its library the Python and numpy include folders as PUBLIC include
# directories and exports it. With the venv inside the source tree (the default .venv) those folders
# lie in the source directory, which CMake forbids in an exported target ("prefixed in the source
# directory"). They are only needed to compile this package, so keep such entries for the build only.
function(molmo_ros_keep_source_tree_includes_out_of_export target)
  if(NOT TARGET ${target})
    return()
  endif()
  get_target_property(_dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
  if(NOT _dirs)
    return()
  endif()
  set(_result "")
  foreach(_dir IN LISTS _dirs)
    cmake_path(IS_PREFIX CMAKE_CURRENT_SOURCE_DIR "${_dir}" NORMALIZE _in_source)
    if(NOT _dir MATCHES "\\$<" AND IS_ABSOLUTE "${_dir}" AND _in_source)
      list(APPEND _result "$<BUILD_INTERFACE:${_dir}>")
    else()
      list(APPEND _result "${_dir}")
    endif()
  endforeach()
  set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_result}")
endfunction()
