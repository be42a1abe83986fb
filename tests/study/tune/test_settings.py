"""What a trial is given travels whole: the settings, with their MAAEConfig, survive pickling (as Ray
ships them) unchanged (the modules that unpickle them stay light: tests/test_layout.py)."""

from __future__ import annotations

import pickle

from maae.config import preset
from study.space import trial_config
from study.tune.settings import LoopSettings, TrialSettings


def test_settings_with_their_config_survive_pickling() -> None:
    base = preset("quick").replace(epochs=3)
    trial = TrialSettings(base_config=base, data_root="/data", categories=("brick", "grass"), eval_every=1,
                          workers=2, cpus_per_worker=1.0, gpus_per_worker=0.0, train_storage="/tmp/train",
                          stop_registry="registry")
    loop = LoopSettings(config=trial_config(base, {"lambda_ang": 0.3}), data_root=trial.data_root,
                        categories=trial.categories, eval_every=trial.eval_every, trial_id="t1",
                        stop_registry=trial.stop_registry)
    for settings in (trial, loop):
        again = pickle.loads(pickle.dumps(settings))
        assert again == settings
    assert pickle.loads(pickle.dumps(loop)).config.lambda_ang == 0.3
