# `ros2 run molmo_ros <name>` and launch files look for executables in lib/<package>. The commands
# are declared once, in the [project.scripts] table of pyproject.toml (which pip reads too); this
# writes one small Python launcher per command and installs it there.
function(molmo_ros_install_ros2_run_executables pyproject_file python_executable)
  file(STRINGS "${pyproject_file}" _lines)
  set(_in_scripts FALSE)
  set(_count 0)
  foreach(_line IN LISTS _lines)
    if(_line MATCHES "^\\[")
      if(_line STREQUAL "[project.scripts]")
        set(_in_scripts TRUE)
      else()
        set(_in_scripts FALSE)
      endif()
    elseif(_in_scripts AND _line MATCHES "^\"?([A-Za-z0-9_-]+)\"? *= *\"([A-Za-z0-9_.]+):([A-Za-z0-9_]+)\"")
      set(_name "${CMAKE_MATCH_1}")
      set(_module "${CMAKE_MATCH_2}")
      set(_function "${CMAKE_MATCH_3}")
      set(_launcher "${CMAKE_CURRENT_BINARY_DIR}/ros2_run_executables/${_name}")
      file(WRITE "${_launcher}"
        "#!${python_executable}\n"
        "import sys\n\n"
        "from ${_module} import ${_function}\n\n"
        "sys.exit(${_function}())\n")
      install(PROGRAMS "${_launcher}" DESTINATION "lib/${PROJECT_NAME}")
      math(EXPR _count "${_count} + 1")
    endif()
  endforeach()
  if(_count EQUAL 0)
    message(FATAL_ERROR "no commands found in the [project.scripts] table of ${pyproject_file}")
  endif()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${pyproject_file}")
endfunction()
