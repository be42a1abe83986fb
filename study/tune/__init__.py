"""Running a study on Ray: Tune schedules the trials; a one-worker trial trains in Tune's own trial actor, a
trial of several workers is one Ray Train run (DDP) of MAAE's training.

- :mod:`~study.tune.cluster`: start or join Ray, and check that a trial's workers can ever be placed;
- :mod:`~study.tune.connect`: bounded waits on Ray (unreachable address, failed start, dead head: exit code 3);
- :mod:`~study.tune.leaks`: placement groups of ended jobs, listed or removed (``python -m study.tune.leaks``);
- :mod:`~study.tune.local_cluster`: a multi-node cluster on one machine (real ``ray start``, stopped by PID);
- :mod:`~study.tune.processes`: processes by PID (a process tree from ``/proc``, stopped one PID at a time);
- :mod:`~study.tune.driver`: the Tuner (Optuna's TPE or a grid, ASHA whose stops are requests);
- :mod:`~study.tune.resizing`: Tune's ResourceChangingScheduler, giving idle CPUs to running one-worker trials;
- :mod:`~study.tune.callback`: Tune's events become the results tables, ``best/`` and the report;
- :mod:`~study.tune.settings`: what a trial's driver and its workers are given (a whole ``MAAEConfig``);
- :mod:`~study.tune.trial`: one trial, the Tune function that trains (one worker) or fits a ``TorchTrainer``;
- :mod:`~study.tune.train_loop`: the train function every worker of a trial runs (light, unpickled by Ray);
- :mod:`~study.tune.trial_worker`: the loop itself, in Tune's actor or on a Train worker: MAAE's training
  sessions, epochs, evaluations, checkpoints, reports;
- :mod:`~study.tune.channel`: how that loop reports, resumes and agrees (Tune or Ray Train);
- :mod:`~study.tune.stopping`: the registry through which the scheduler asks a trial to stop.

Nothing is imported here: Ray's processes import the light modules alone (see ``train_loop``).
"""
