"""Mask-training cost against plain fine-tuning, on one thread, printed as ``name: value`` lines.

Model: GPT-2-style bridge (d_model 256, 4 layers, 4 heads, vocab 64) booted through ``boot_transformers``; batch
64 x 32 tokens; loss: cross-entropy on every next token. Timings are medians of the CPU time of interleaved steps in
this process (:func:`timed`); peak memory is the growth of the peak RSS over the ready process, measured in a fresh
child process per configuration (peak RSS cannot be reset inside one process).

Run: ``make bench`` (or ``python benchmarks/bench_masks.py --steps 15``).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import resource
import statistics
import tempfile
import time

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import GPT2Config, GPT2LMHeadModel

from modmask_lens import (
    CSORDAS_MASKS,
    CSORDAS_TRAINING,
    MaskConfig,
    MaskTrainer,
    SubtaskData,
    TrainConfig,
    score_answers,
)
from modmask_lens.core.encoding import IGNORE_INDEX

BATCH, POSITIONS, VOCAB, TASKS = 64, 32, 64, 4


def build_bridge(directory: str) -> TransformerBridge:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=VOCAB, n_positions=POSITIONS)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return TransformerBridge.boot_transformers(directory, device="cpu")


def subtask(name: str, seed: int) -> SubtaskData:
    input_ids = torch.randint(0, VOCAB, (BATCH * 4, POSITIONS), generator=torch.Generator().manual_seed(seed))
    return SubtaskData(name, input_ids, input_ids.clone())


class FineTuning:
    """Plain fine-tuning of every weight through the same bridge, batch and loss; ``chunks`` > 1 accumulates the
    gradient over that many slices of the batch, as mask training runs one slice per mask sample."""

    def __init__(self, bridge: TransformerBridge, data: SubtaskData, batch: int = BATCH, chunks: int = 1):
        self.bridge, self.data, self.batch, self.chunks = bridge, data, batch, chunks
        self.parameters = [p for p in bridge.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=1e-5)

    def step(self, index: int) -> None:
        rows = torch.arange(index * self.batch, (index + 1) * self.batch) % len(self.data)
        self.optimizer.zero_grad(set_to_none=True)
        n_tokens = int((self.data.labels[rows][:, 1:] != IGNORE_INDEX).sum())
        for chunk in rows.tensor_split(self.chunks):
            score = score_answers(self.bridge(self.data.input_ids[chunk]), self.data.labels[chunk])
            (score.loss_sum / n_tokens).backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()


class MaskTraining:
    """Mask training with the library's defaults (4 mask samples per step, per-weight logits) unless ``mask_config``
    and ``n_samples`` say otherwise, or with Csordás's method (``csordas``); ``fully_shard`` (Csordás's method, the
    one it runs): the sharded path in one process (block-by-block gathers and the recomputing backward, without the
    communication)."""

    def __init__(
        self,
        bridge: TransformerBridge,
        tasks: list[SubtaskData],
        steps: int,
        fully_shard: bool = False,
        batch: int = BATCH,
        mask_config: MaskConfig = MaskConfig(),
        csordas: bool = False,
        n_samples: int = TrainConfig().n_samples,
    ):
        train_config = TrainConfig(n_samples=n_samples)
        if csordas or fully_shard:
            mask_config = dataclasses.replace(CSORDAS_MASKS, granularity=mask_config.granularity)
            train_config = CSORDAS_TRAINING
        self.trainer = MaskTrainer(
            bridge,
            tasks,
            mask_config,
            dataclasses.replace(train_config, steps=steps, batch_size=batch),
            progress=False,
            fully_shard=fully_shard,
        )

    def step(self, index: int) -> None:
        for run in self.trainer.runs:
            self.trainer._train_step(run)
        self.trainer.step += 1

    def cache_references(self) -> None:
        """Compute the full model's reference of every example now, as a run has cached them once past its first
        pass over the data (objectives with a per-example reference; others compute it every step anyway)."""
        for run in self.trainer.runs:
            every = torch.arange(len(run.data))
            self.trainer._reference(run, run.data.examples(every), every)


def timed(step, index: int) -> float:
    """The CPU time (seconds, all of this process's threads) of one step: on a machine shared with other jobs the
    wall-clock time of a one-thread step includes the time the thread waited for a core, which swung the ratio of two
    interleaved runs between 0.96 and 1.11 at a load average of 5; their CPU-time ratios agreed within 0.02."""
    start = time.process_time()
    step(index)
    return time.process_time() - start


def peak_memory_child(kind: str, steps: int, queue) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        bridge = build_bridge(directory)
        if kind == "finetune":
            runner = FineTuning(bridge, subtask("t0", 0))
        elif kind == "masks":
            runner = MaskTraining(bridge, [subtask("t0", 0)], steps)
        else:
            runner = MaskTraining(bridge, [subtask(f"t{k}", k) for k in range(TASKS)], steps)
        ready = _current_rss_kb()
        for index in range(steps):
            runner.step(index)
        queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - ready)


def _current_rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def peak_memory_kb(kind: str, steps: int) -> int:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=peak_memory_child, args=(kind, steps, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per configuration (after 3 warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    warmup, steps = 3, arguments.steps

    with tempfile.TemporaryDirectory() as directory:
        bridge = build_bridge(directory)
        finetune = FineTuning(bridge, subtask("t0", 0))
        # Fine-tuning changes the weights; the mask runs use their own pristine bridge.
        mask_bridge = build_bridge(directory + "/masks")
        masks = MaskTraining(mask_bridge, [subtask("t0", 0)], warmup + steps)
        csordas = MaskTraining(mask_bridge, [subtask("t0", 0)], warmup + steps, csordas=True)
        sharded = MaskTraining(mask_bridge, [subtask("t0", 0)], warmup + steps, fully_shard=True)
        runs = (finetune, masks, csordas, sharded)
        finetune_times, mask_times, csordas_times, sharded_times = series = [], [], [], []
        for index in range(warmup + steps):  # interleaved, so drifts in machine load hit all alike
            times = [timed(run.step, index) for run in runs]
            if index >= warmup:
                for timings, time_s in zip(series, times):
                    timings.append(time_s)

        multi_steps = max(steps // 3, 3)
        tasks = [subtask(f"t{k}", k) for k in range(TASKS)]
        start = time.process_time()
        MaskTrainer(
            mask_bridge, tasks, train_config=TrainConfig(steps=multi_steps, batch_size=BATCH), progress=False
        ).train()
        joint_time = time.process_time() - start
        start = time.process_time()
        for task in tasks:
            MaskTrainer(
                mask_bridge, [task], train_config=TrainConfig(steps=multi_steps, batch_size=BATCH), progress=False
            ).train()
        separate_time = time.process_time() - start

    memory_steps = 3
    finetune_memory = peak_memory_kb("finetune", memory_steps)
    mask_memory = peak_memory_kb("masks", memory_steps)
    multi_memory = peak_memory_kb("multi", memory_steps)

    finetune_median, mask_median = statistics.median(finetune_times), statistics.median(mask_times)
    print(f"threads: {arguments.threads}")
    print(f"finetune_step_ms: {finetune_median * 1e3:.1f}")
    print(f"mask_step_ms: {mask_median * 1e3:.1f}")
    print(f"mask_step_ratio: {mask_median / finetune_median:.3f}")
    print(f"csordas_step_ratio: {statistics.median(csordas_times) / finetune_median:.3f}")
    print(f"sharded_step_ratio: {statistics.median(sharded_times) / statistics.median(csordas_times):.3f}")
    print(f"finetune_peak_mem_mb: {finetune_memory / 1024:.0f}")
    print(f"mask_peak_mem_mb: {mask_memory / 1024:.0f}")
    print(f"mask_peak_mem_ratio: {mask_memory / finetune_memory:.3f}")
    print(f"multi_task_ratio: {joint_time / separate_time:.3f}")
    print(f"multi_task_mem_ratio: {multi_memory / mask_memory:.3f}")


if __name__ == "__main__":
    main()
