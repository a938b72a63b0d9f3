# `make uninstall` (cmake --build build --target uninstall): remove exactly what
# `make install` placed, as listed in install_manifest.txt, and never what an
# administrator made or changed:
#  - kvp11.conf is removed only while it is byte-for-byte the shipped one;
#  - the registry, secrets, logs and the audit file are never in the manifest;
#  - directories are removed only when empty;
#  - the kvp11 user and groups stay (files elsewhere may still belong to them).
# Everything left behind is listed at the end.
# Variables: MANIFEST, SHIPPED_CONF, SYSCONF_DIR, STATE_DIR.
if(NOT EXISTS "${MANIFEST}")
  message(FATAL_ERROR "${MANIFEST} not found: nothing was installed from this build directory")
endif()
file(STRINGS "${MANIFEST}" files)
# kvp11.conf is in the manifest only when that install created it; look at it always
list(APPEND files "${SYSCONF_DIR}/kvp11.conf")
list(REMOVE_DUPLICATES files)
set(left "")
set(dirs "")
foreach(f ${files})
  set(path "$ENV{DESTDIR}${f}")
  get_filename_component(d "${path}" DIRECTORY)
  list(APPEND dirs "${d}")
  if(NOT EXISTS "${path}" AND NOT IS_SYMLINK "${path}")
    continue()
  endif()
  if(f STREQUAL "${SYSCONF_DIR}/kvp11.conf")
    file(SHA256 "${path}" have)
    file(SHA256 "${SHIPPED_CONF}" shipped)
    if(NOT have STREQUAL shipped)
      list(APPEND left "${path} (edited configuration)")
      continue()
    endif()
  endif()
  message(STATUS "Removing ${path}")
  file(REMOVE "${path}")
endforeach()
list(APPEND dirs "$ENV{DESTDIR}${SYSCONF_DIR}" "$ENV{DESTDIR}${STATE_DIR}")
list(REMOVE_DUPLICATES dirs)
foreach(d ${dirs})
  # only kvp11's own directories, and only when empty
  if(d MATCHES "kvp11" AND IS_DIRECTORY "${d}")
    file(GLOB content "${d}/*")
    if(content)
      list(APPEND left "${d}/ (not empty: ${content})")
    else()
      message(STATUS "Removing ${d}/")
      file(REMOVE_RECURSE "${d}")
    endif()
  endif()
endforeach()
if(left)
  message(STATUS "Left in place:")
  foreach(l ${left})
    message(STATUS "  ${l}")
  endforeach()
endif()
message(STATUS "Left in place: the user kvp11 and the groups kvp11, kvp11-clients "
  "(remove with: userdel kvp11; groupdel kvp11-clients; groupdel kvp11)")
