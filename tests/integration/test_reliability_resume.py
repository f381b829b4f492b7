"""No run is lost: a mask training SIGKILLed mid-run, or inside a checkpoint write, resumes from its last complete
checkpoint to logits bit-identical to an uninterrupted run's (CPU).

The killed runs are this file run as a script in a subprocess (``python test_reliability_resume.py MODE DIR``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from conftest import VOCAB, boot_native

from modmask_lens import MaskTrainer, SubtaskData, TrainConfig, masked
from modmask_lens.masks.training import CHECKPOINT_FILE

CONFIG = TrainConfig(steps=40, batch_size=8, n_samples=2, checkpoint_every=1)
KILLED_WRITE_STEP = 3  # the run dies while writing this step's checkpoint


def build() -> tuple[torch.nn.Module, SubtaskData]:
    """The same model and subtask in every process."""
    torch.manual_seed(0)
    bridge = boot_native()
    input_ids = torch.randint(0, VOCAB, (16, 6), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(input_ids, -100)
    labels[:, 4:] = input_ids[:, 4:]
    return bridge, SubtaskData("resume", input_ids, labels)


def run_script(mode: str, checkpoint_dir: Path) -> None:
    """``announce``: print a line after every checkpoint. ``kill_in_write``: SIGKILL this process once the temporary
    file of step ``KILLED_WRITE_STEP``'s checkpoint is written, before its rename."""
    import modmask_lens.core.checkpoint

    bridge, data = build()
    trainer = MaskTrainer(bridge, [data], train_config=CONFIG, checkpoint_dir=checkpoint_dir, progress=False)
    save_file = modmask_lens.core.checkpoint.save_file

    def save_then_maybe_die(tensors, filename, metadata):
        save_file(tensors, filename, metadata=metadata)
        if mode == "kill_in_write" and trainer.step == KILLED_WRITE_STEP:
            os.kill(os.getpid(), signal.SIGKILL)

    modmask_lens.core.checkpoint.save_file = save_then_maybe_die
    original_save = trainer.save_checkpoint

    def save_and_announce():
        path = original_save()
        print(f"checkpoint {trainer.step}", flush=True)
        return path

    trainer.save_checkpoint = save_and_announce
    trainer.train()


def start(mode: str, checkpoint_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, mode, str(checkpoint_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent,
        # run as a script, it imports the shared helpers from tests/ (tests/conftest.py)
        env=os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def resume_and_compare(checkpoint_dir: Path, expected_step: int | None = None) -> int:
    """Resume in this process, finish, and compare with an uninterrupted run; return the step resumed from."""
    bridge, data = build()
    uninterrupted = MaskTrainer(bridge, [data], train_config=CONFIG, progress=False).train()["resume"]
    resumed_trainer = MaskTrainer(bridge, [data], train_config=CONFIG, checkpoint_dir=checkpoint_dir, progress=False)
    resumed_from = resumed_trainer.step
    if expected_step is not None:
        assert resumed_from == expected_step
    resumed = resumed_trainer.train()["resume"]
    for name, logit in uninterrupted.logits.items():
        assert torch.equal(resumed.logits[name], logit), name
    with masked(bridge, uninterrupted):
        expected_logits = bridge(data.input_ids)
    with masked(bridge, resumed):
        assert torch.equal(bridge(data.input_ids), expected_logits)
    return resumed_from


def test_sigkill_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    process = start("announce", tmp_path)
    first_line = process.stdout.readline()  # blocks until the first checkpoint is on disk
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=300) == -signal.SIGKILL
    assert first_line == "checkpoint 1\n"
    resumed_from = resume_and_compare(tmp_path)
    assert 1 <= resumed_from < CONFIG.steps


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    process = start("kill_in_write", tmp_path)
    lines = process.stdout.read().splitlines()
    assert process.wait(timeout=300) == -signal.SIGKILL
    assert lines == [f"checkpoint {step}" for step in range(1, KILLED_WRITE_STEP)]
    # the half-finished write (named after the killed writer's process id), which readers ignore
    assert len(list(tmp_path.glob(CHECKPOINT_FILE + ".*.tmp"))) == 1
    resume_and_compare(tmp_path, expected_step=KILLED_WRITE_STEP - 1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_script(sys.argv[1], Path(sys.argv[2]))
