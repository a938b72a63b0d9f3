/*
 * libkvp11.so is built from the whole kvp11_front archive (the PKCS#11
 * entry points) and kvp11_core; this file only gives CMake a source for the
 * MODULE target. The exported symbols are fixed by kvp11.map.
 */
typedef int kvp_module_translation_unit_is_not_empty;
