"""Cold start of one result backend, run as a script in a fresh interpreter.

    python benchmarks/coldstart.py BACKEND_URL '{"celery": "conf"}'

Prints one JSON line: seconds to import celery, to build the app and then
the backend (the backend module's imports and its table set-up included),
and for the first store; peak RSS (KiB) and the number of modules loaded. Run as
a file, not as ``-m benchmarks.coldstart``, so that nothing of the benchmark
itself is imported.
"""
import json
import resource
import sys
import time
import uuid


def main() -> None:
    del sys.path[0]  # this script's folder: nothing is to be imported from there
    url, conf = sys.argv[1], json.loads(sys.argv[2])
    t0 = time.perf_counter()
    import celery

    t1 = time.perf_counter()
    app = celery.Celery("coldstart", backend=url, set_as_current=False)
    app.conf.update(result_serializer="json", accept_content=["json"],
                    result_accept_content=["json"], **conf)
    t_app = time.perf_counter()
    backend = app.backend  # the backend module's imports, the backend, its tables
    t2 = time.perf_counter()
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, {"user_id": 1234, "status": "ok", "items": 3}, "SUCCESS")
    t3 = time.perf_counter()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    modules = len(sys.modules)
    hwm_kib = 0  # the kernel's own high-water mark, to cross-check ru_maxrss
    try:
        with open("/proc/self/status") as status:
            hwm_kib = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except OSError:
        pass
    backend.forget(task_id)  # leave nothing behind (after the measurements)
    print(json.dumps({"import_celery": t1 - t0, "build": t2 - t1, "app": t_app - t1,
                      "backend": t2 - t_app, "first_store": t3 - t2,
                      "total": t3 - t0, "rss_kib": rss_kib, "hwm_kib": hwm_kib,
                      "modules": modules}))


if __name__ == "__main__":
    main()
