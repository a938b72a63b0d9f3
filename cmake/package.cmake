# `make deb` (cpack -G DEB in build/): the Debian package kvp11.
#  - /etc/kvp11/kvp11.conf and kvp11.conf.example are conffiles (an edited
#    configuration survives upgrades and `dpkg -r`);
#  - postinst creates the system group kvp11, the user kvp11 and the group
#    kvp11-clients when missing (recorded, so that purge removes only those),
#    and gives /var/lib/kvp11 root:kvp11 0750;
#  - prerm stops kvp11-server.service; postrm purge removes the accounts it
#    created and /var/lib/kvp11 when it holds no registry. A registry is
#    never deleted by the package: purge names it and leaves it.
# Maintainer scripts: debian-pkg/. See docs/deployment.md, "Debian package".
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "kvp11")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_CONTACT "kvp11 maintainers <kvp11@example.org>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "PKCS#11 module for keys in Azure Key Vault or a local HSM")
set(CPACK_PACKAGE_DESCRIPTION "libkvp11.so shows certificates whose private keys live in Azure
Key Vault or in a local HSM as PKCS#11 tokens, for OpenSSL, GnuTLS, nginx,
Java and pkcs11-tool. The kvp11 tool registers certificates, creates and
imports keys, makes certificate requests and signs or decrypts S/MIME messages.")
set(CPACK_DEBIAN_PACKAGE_SECTION "utils")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "passwd")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "p11-kit, p11-kit-modules")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "softhsm2")
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://example.org/kvp11")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_STRIP_FILES ON)
configure_file(${PROJECT_SOURCE_DIR}/debian-pkg/conffiles.in ${PROJECT_BINARY_DIR}/debian-pkg/conffiles @ONLY)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${PROJECT_BINARY_DIR}/debian-pkg/conffiles
  ${PROJECT_SOURCE_DIR}/debian-pkg/postinst
  ${PROJECT_SOURCE_DIR}/debian-pkg/prerm
  ${PROJECT_SOURCE_DIR}/debian-pkg/postrm)
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_SET_DESTDIR OFF)

# Debian wants a copyright file and a compressed changelog in the doc directory.
add_custom_command(OUTPUT ${PROJECT_BINARY_DIR}/debian-pkg/changelog.gz
  COMMAND gzip -9nc ${PROJECT_SOURCE_DIR}/debian-pkg/changelog > ${PROJECT_BINARY_DIR}/debian-pkg/changelog.gz
  DEPENDS ${PROJECT_SOURCE_DIR}/debian-pkg/changelog VERBATIM)
add_custom_target(kvp11-changelog ALL DEPENDS ${PROJECT_BINARY_DIR}/debian-pkg/changelog.gz)
install(FILES ${PROJECT_SOURCE_DIR}/debian-pkg/copyright
  ${PROJECT_BINARY_DIR}/debian-pkg/changelog.gz
  DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES ${PROJECT_SOURCE_DIR}/hsm-config/kvp11-accounts.sh
  DESTINATION ${CMAKE_INSTALL_LIBEXECDIR}/kvp11 RENAME kvp11-accounts
  PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
install(FILES ${PROJECT_SOURCE_DIR}/docs/deployment.md ${PROJECT_SOURCE_DIR}/docs/configuration.md
  ${PROJECT_SOURCE_DIR}/docs/clients.md DESTINATION ${CMAKE_INSTALL_DOCDIR})

include(CPack)
