"""The layer order of .importlinter (data at the bottom, the engine at the top) holds: a module
importing upwards, or a cycle between subpackages, fails here."""
import os
import subprocess
import sys
import unittest

from seg2_testing import REPO_ROOT


class TestLayers(unittest.TestCase):
    def test_import_contract_is_kept(self):
        lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
        run = subprocess.run(
            [lint_imports, "--config", str(REPO_ROOT / ".importlinter"), "--no-cache"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        self.assertEqual(run.returncode, 0, run.stdout[-3000:] + run.stderr[-2000:])
        self.assertIn("1 kept, 0 broken", run.stdout)


if __name__ == "__main__":
    unittest.main()
