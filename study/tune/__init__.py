"""Running a study on Ray: Tune schedules the trials, each trial is one Ray Train run of MAAE's training.

- :mod:`~study.tune.cluster`: start or join Ray, and check that a trial's workers can ever be placed;
- :mod:`~study.tune.driver`: the Tuner (Optuna's TPE or a grid, ASHA whose stops are requests);
- :mod:`~study.tune.callback`: Tune's events become the results tables, ``best/`` and the report;
- :mod:`~study.tune.settings`: what a trial's driver and its workers are given (a whole ``MAAEConfig``);
- :mod:`~study.tune.trial`: one trial's driver, the Tune function that fits a ``TorchTrainer``;
- :mod:`~study.tune.train_loop`: the train function every worker of a trial runs (light, unpickled by Ray);
- :mod:`~study.tune.trial_worker`: the loop itself, on a worker: MAAE's ``TrainingSession``, epochs,
  evaluations, checkpoints, reports;
- :mod:`~study.tune.stopping`: the registry through which the scheduler asks a trial to stop.

Nothing is imported here: Ray's processes import the light modules alone (see ``train_loop``).
"""
