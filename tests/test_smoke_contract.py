"""A first contract test: store and read back on every dialect."""


def test_store_and_read_back(db):
    backend = db.backend()
    backend.store_result("t1", {"answer": 42}, "SUCCESS")
    meta = backend.get_task_meta("t1", cache=False)
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == {"answer": 42}
