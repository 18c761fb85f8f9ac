import subprocess
import sys

from ceed_vla import cli


def test_help_lists_every_job():
    out = subprocess.run([sys.executable, "-m", "ceed_vla.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for job in cli.JOBS[None]:
        assert job.name in out.stdout
    for group in cli.GROUP_HELP:
        assert group in out.stdout


def test_group_without_job_prints_group_help(capsys):
    assert cli.main(["bench"]) == 2
    assert "decode" in capsys.readouterr().out


def test_every_job_module_exposes_the_job_protocol():
    import importlib.util

    for jobs in cli.JOBS.values():
        for job in jobs:
            spec = importlib.util.find_spec(job.module)
            assert spec is not None, f"`ceed {job.name}` names {job.module}, which does not exist"
            text = open(spec.origin).read()
            assert "def configure_parser(" in text and "def main(" in text, job.module
