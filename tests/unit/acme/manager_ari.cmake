dm_unit_test(test_manager_ari ${CMAKE_CURRENT_LIST_DIR}/test_manager_ari.c dm_acme)
target_sources(test_manager_ari PRIVATE ${CMAKE_CURRENT_LIST_DIR}/fake_ca.c)
