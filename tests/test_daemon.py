import io
import json

from twisted.logger import LogPublisher, Logger, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from netecho.daemon import use_json_log


class JSONLogTests(SynchronousTestCase):
    def test_text_observers_become_json(self):
        out = io.StringIO()
        publisher = LogPublisher(textFileLogObserver(out))
        self.assertEqual(use_json_log(publisher), 1)
        Logger(observer=publisher).info("hello {who}", who="world")
        record = json.loads(out.getvalue().lstrip("\x1e"))
        self.assertEqual((record["log_format"], record["who"]), ("hello {who}", "world"))
