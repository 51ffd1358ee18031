"""A hang for the hung-trial tests, installed in child processes through ``PYTHONPATH``.

Python imports ``sitecustomize`` at start-up, so a search started with this folder on its path
(and every Ray worker such a search starts) runs this. It does nothing unless
``PDENAS_TEST_HANG_ONCE`` names a marker file: then the first trial to finish an epoch creates
the marker and blocks for 600 s inside ``fit``, a call that never returns as far as the test is
concerned; later trials (the marker exists) train normally.
"""

import os
import time
from pathlib import Path

if os.environ.get("PDENAS_TEST_HANG_ONCE"):
    import pdenas.train as _train

    _real_fit = _train.fit

    def _hanging_fit(model, data, config, device, callback=None, **kwargs):
        def hook(epoch, metrics):
            stop = callback(epoch, metrics) if callback is not None else False
            marker = Path(os.environ["PDENAS_TEST_HANG_ONCE"])
            if epoch == 1 and not marker.exists():  # the first trial hangs after one epoch
                marker.touch()
                time.sleep(600)
            return stop

        return _real_fit(model, data, config, device, callback=hook, **kwargs)

    _train.fit = _hanging_fit
