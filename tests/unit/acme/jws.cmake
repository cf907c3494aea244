# acme/jws.c: keys, JWK thumbprints, JWS signing and verification (label unit).
# Included from tests/CMakeLists.txt, hence the absolute source path.
dm_unit_test(test_jws ${CMAKE_CURRENT_LIST_DIR}/test_jws.c dm_acme)
