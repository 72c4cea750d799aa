"""One writer process of the concurrency test (run as a script, not collected by pytest).

    python concurrent_writer.py URL RUN_ID WORKER N_SESSIONS N_STEPS

Writes N_SESSIONS sessions of N_STEPS steps each to RUN_ID, as fast as it can.
"""

import sys

from boed.store import Store

url, run_id, worker, n_sessions, n_steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
store = Store.open(url)
n_labels = len(store.get_run(run_id).labels)
for i in range(n_sessions):
    sid = store.start_session(
        run_id, image_id=f"w{worker}-img{i}", image_index=i, policy="boed", true_labels=[1.0] * n_labels
    )
    for step in range(n_steps):
        store.log_step(
            sid,
            step=step,
            location=None if step == 0 else (step, step),
            candidate=None if step == 0 else step,
            eig=None if step == 0 else 0.1 * step,
            eig_map=None,
            probs=[0.5] * n_labels,
            seconds=0.01,
        )
    store.finish_session(sid)
store.close()
