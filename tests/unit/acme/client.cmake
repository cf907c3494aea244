# acme/client.c, account.c, order.c, ari.c: the RFC 8555 client (label unit).
# Included from tests/CMakeLists.txt, hence the absolute paths.
#
# Until acme/CMakeLists.txt lists these sources in dm_acme, add them here so
# the unit and fuzz targets link; a no-op once they are listed there.
get_target_property(DM_ACME_SRCS dm_acme SOURCES)
foreach(src client.c account.c order.c ari.c)
  if(EXISTS ${CMAKE_SOURCE_DIR}/acme/${src} AND NOT "${DM_ACME_SRCS}" MATCHES "(^|;|/)${src}(;|$)")
    target_sources(dm_acme PRIVATE ${CMAKE_SOURCE_DIR}/acme/${src})
  endif()
endforeach()

# The scripted fake CA every test below talks to (plain http:// on loopback).
set(DM_ACME_FAKE_CA ${CMAKE_CURRENT_LIST_DIR}/fake_ca.c)
foreach(t client account order ari)
  if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/test_acme_${t}.c)
    dm_unit_test(test_acme_${t} ${CMAKE_CURRENT_LIST_DIR}/test_acme_${t}.c dm_acme)
    target_sources(test_acme_${t} PRIVATE ${DM_ACME_FAKE_CA})
  endif()
endforeach()
