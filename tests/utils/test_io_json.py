"""seg2.io.read_json parses with orjson when installed and with the json module otherwise:
both must give the standard library's objects, and every bad file the same clear error."""

import json
import os
import tempfile
import unittest
from unittest import mock

from seg2.io import InputError, read_json


class TestReadJson(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)

    def _file(self, payload: bytes) -> str:
        path = os.path.join(self._tmp.name, "x.json")
        with open(path, "wb") as f:
            f.write(payload)
        return path

    def _both(self, path):
        """read_json's result with orjson (if installed) and with the json module only."""
        with mock.patch("seg2.io.orjson", None):
            plain = read_json(path)
        return read_json(path), plain

    def test_objects_equal_the_json_modules(self):
        text = (
            '{"images": [{"id": 1, "file_name": "\\u00e9t\\u00e9.png", "h": 480.5}],'
            ' "big": 123456789012345678901234567890, "nan": NaN, "inf": -Infinity,'
            f' "ids": [{2**70}, {2**64 + 1}, {-(2**63) - 1}, {2**63 - 1}],'
            ' "nested": {"a": [true, false, null, 1e-300, -0.0]}, "dup": 1, "dup": 2}'
        )
        expected = json.loads(text)  # the reference: Python's own parser
        for got in self._both(self._file(text.encode("utf-8"))):
            self.assertEqual(json.dumps(got, sort_keys=True), json.dumps(expected, sort_keys=True))
            self.assertEqual(got["big"], 123456789012345678901234567890)
            # integers beyond 64 bits stay integers (an id must not print as 1.18e+21)
            self.assertEqual(got["ids"], [2**70, 2**64 + 1, -(2**63) - 1, 2**63 - 1])
            self.assertTrue(all(type(v) is int for v in got["ids"]))
        plain = '{"annotations": [{"segments_info": [{"id": 7, "category_id": 3}]}]}'
        for got in self._both(self._file(plain.encode())):
            self.assertEqual(got, json.loads(plain))

    def test_bad_files_give_the_same_errors(self):
        cases = [
            (b'{"images": [}', r"x\.json: malformed JSON at line 1 column 13"),
            (b'\xef\xbb\xbf{"a": 1}', r"x\.json: malformed JSON at line 1 column 1: Unexpected UTF-8 BOM"),
            (b'{"a": "\xff"}', r"x\.json: JSON is not UTF-8 text"),
            (b"[" * 100000 + b"]" * 100000, r"x\.json: JSON is nested too deeply to parse"),
        ]
        for payload, pattern in cases:
            path = self._file(payload)
            for patched in (False, True):
                with mock.patch("seg2.io.orjson", None) if patched else mock.patch.dict({}):
                    with self.assertRaisesRegex(InputError, pattern):
                        read_json(path)
        with self.assertRaisesRegex(InputError, "file not found"):
            read_json(os.path.join(self._tmp.name, "missing.json"))
        with self.assertRaisesRegex(InputError, "JSON path is a directory, not a file"):
            read_json(self._tmp.name)


if __name__ == "__main__":
    unittest.main()
