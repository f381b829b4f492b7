"""Train a zoo model from scratch on one CPU thread and write it, with its card, into the package.

Run with ``modmask-lens zoo train NAME [--out DIR] [--checkpoint-dir DIR]``. Training resumes from the
newest checkpoint in ``--checkpoint-dir`` (default ``~/.cache/modmask-lens/zoo-checkpoints/NAME``), so a killed run
continues where it stopped and ends with the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from experiments.zoo.architectures import build_model
from experiments.zoo.modular_training import regulariser_for, unwrapped_model
from experiments.zoo.recipes import Recipe, recipe
from modmask_lens import zoo
from modmask_lens.core.atomic_files import replace_folder_atomically
from modmask_lens.core.checkpoint import Checkpointer, load_optimizer, optimizer_groups, optimizer_tensors
from modmask_lens.core.encoding import TokenizedExamples, encode_pairs
from modmask_lens.core.random import step_generator
from modmask_lens.tasks.catalog import TaskSpec, task_spec
from modmask_lens.tasks.evaluation import evaluate_exact_match, exact_match_correct
from modmask_lens.zoo.cards import ModelCard, write_card

TORCH_THREADS = 1  # the zoo is trained on one core; two threads on a shared 2-core machine run ~9x slower
PROGRESS_SAMPLE = 1000  # test examples scored (teacher forcing) at each progress evaluation
CHECKPOINT_FORMAT = "modmask-lens/zoo-training-checkpoint"
CHECKPOINT_FILE = "checkpoint.safetensors"
BUCKET_BATCHES = 50  # batches per length bucket: sorting within buckets cuts padding while batches stay random


def _epoch_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """One epoch of example indices in batches of similar length, shuffled; a function of (seed, epoch) only,
    so a resumed run sees the same batches."""
    generator = step_generator(seed, epoch)
    order = torch.randperm(len(lengths), generator=generator)
    batches = []
    for bucket in order.split(batch_size * BUCKET_BATCHES):
        bucket = bucket[torch.argsort(lengths[bucket], stable=True)]
        batches.extend(bucket.split(batch_size))
    return [batches[index] for index in torch.randperm(len(batches), generator=generator)]


def _learning_rate_factor(step: int, recipe_: Recipe) -> float:
    """Linear warm-up, then cosine decay to zero at ``recipe_.steps``."""
    if step < recipe_.warmup_steps:
        return (step + 1) / recipe_.warmup_steps
    progress = (step - recipe_.warmup_steps) / max(1, recipe_.steps - recipe_.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(recipe_: Recipe, out_dir: Path, checkpoint_dir: Path, command: str, restart: bool = False) -> ModelCard:
    """Train ``recipe_`` (resuming from ``checkpoint_dir`` unless ``restart``, which starts from step 0 and
    overwrites the checkpoint), then write the model, its tokenizer and its card to ``out_dir`` whole (replacing the
    model there)."""
    torch.set_num_threads(TORCH_THREADS)
    task: TaskSpec = task_spec(recipe_.task)
    data = task.build(recipe_.seed)
    tokenizer = task.make_tokenizer()
    torch.manual_seed(recipe_.seed)
    model = build_model(recipe_.architecture, tokenizer)
    regulariser = regulariser_for(recipe_, model, tokenizer)  # None for plain training
    train_examples: TokenizedExamples = encode_pairs(
        tokenizer, list(data[task.train_split]["question"]), list(data[task.train_split]["answer"])
    )
    test_split = data[task.test_split]
    progress_split = test_split.shuffle(seed=recipe_.seed).select(range(min(PROGRESS_SAMPLE, test_split.num_rows)))
    progress_examples = encode_pairs(tokenizer, list(progress_split["question"]), list(progress_split["answer"]))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe_.lr, betas=recipe_.betas, weight_decay=recipe_.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, recipe_))
    sequence_lengths = (train_examples.input_ids != train_examples.pad_token_id).sum(dim=1)
    batches_per_epoch = math.ceil(len(train_examples) / recipe_.batch_size)  # the last bucket alone is partial
    loaded_epoch, epoch_batches = -1, []
    checkpointer = Checkpointer(checkpoint_dir / CHECKPOINT_FILE, CHECKPOINT_FORMAT)
    step, elapsed_before = 0, 0.0
    if checkpointer.exists() and not restart:
        tensors, state = checkpointer.load(
            {"step": int, "elapsed_s": float, "optimizer_groups": list, "scheduler": dict}
        )
        wanted = json.loads(json.dumps(dataclasses.asdict(recipe_)))
        if state.get("recipe", wanted) != wanted or state["step"] > recipe_.steps:
            held = state.get("recipe", {}).get("name", "an older recipe")
            raise ValueError(
                f"{checkpointer.path} holds a run of {held!r} at step {state['step']}, not of this recipe "
                f"({recipe_.name!r}, {recipe_.steps} steps); delete it or give another --checkpoint-dir"
            )
        model.load_state_dict(
            {name[len("model/") :]: value for name, value in tensors.items() if name.startswith("model/")}
        )
        load_optimizer(optimizer, tensors, "adamw", state["optimizer_groups"])
        scheduler.load_state_dict(state["scheduler"])
        step, elapsed_before = state["step"], state["elapsed_s"]
        _log(f"resumed {recipe_.name} at step {step} from {checkpointer.path}")
    started = time.perf_counter()
    moved_since_log = 0
    model.train()
    while step < recipe_.steps:
        epoch, batch_index = divmod(step, batches_per_epoch)
        if epoch != loaded_epoch:
            epoch_batches = _epoch_batches(sequence_lengths, recipe_.batch_size, recipe_.seed, epoch)
            loaded_epoch = epoch
        batch = train_examples.select(epoch_batches[batch_index])
        loss = model(input_ids=batch.input_ids, labels=batch.labels).loss
        penalty = regulariser.penalty(step) if regulariser is not None else torch.zeros(())
        optimizer.zero_grad(set_to_none=True)
        (loss + penalty).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe_.grad_clip)
        optimizer.step()
        scheduler.step()
        moved_since_log += regulariser.after_step(step, optimizer) if regulariser is not None else 0
        step += 1
        if step % recipe_.eval_every == 0 or step == recipe_.steps:
            model.eval()
            accuracy = exact_match_correct(model, progress_examples, "teacher_forcing").float().mean()
            model.train()
            extra = f" penalty {penalty.item():+.4f} units moved {moved_since_log}" if regulariser is not None else ""
            moved_since_log = 0
            _log(
                f"step {step}/{recipe_.steps} loss {loss.item():.4f}{extra} test-sample exact match {accuracy:.4f} "
                f"({elapsed_before + time.perf_counter() - started:.0f} s)"
            )
        if step % recipe_.checkpoint_every == 0 or step == recipe_.steps:
            tensors = {f"model/{name}": value for name, value in model.state_dict().items()}
            checkpointer.save(
                tensors | optimizer_tensors(optimizer, "adamw"),
                {
                    "step": step,
                    "elapsed_s": elapsed_before + time.perf_counter() - started,
                    "optimizer_groups": optimizer_groups(optimizer),
                    "scheduler": scheduler.state_dict(),
                    "recipe": dataclasses.asdict(recipe_),
                },
            )
    wall_time_s = elapsed_before + time.perf_counter() - started
    if regulariser is not None:
        model = unwrapped_model(model, recipe_, tokenizer)
    model.eval()
    accuracies = {}
    for split in task.evaluation_splits:
        frame = evaluate_exact_match(model, tokenizer, data[split], "greedy", task.subtask_column)
        accuracies.update({f"{split}/{row.subtask}": round(row.accuracy, 6) for row in frame.itertuples()})
        _log(f"{split}: greedy exact match {frame.accuracy.iloc[0]:.4f}")
    card = ModelCard(
        name=recipe_.name,
        task=task.name,
        task_description=task.description,
        architecture=dataclasses.asdict(recipe_.architecture),
        parameter_count=sum(parameter.numel() for parameter in model.parameters()),
        training_command=command,
        recipe={key: value for key, value in dataclasses.asdict(recipe_).items() if key != "architecture"},
        seed=recipe_.seed,
        torch_threads=TORCH_THREADS,
        wall_time_s=round(wall_time_s, 1),
        accuracies=accuracies,
    )

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_card(card, folder)

    replace_folder_atomically(out_dir, save)  # a killed run leaves the old model, never half a new one
    return card


def train_named(
    name: str, out_dir: Path | None = None, checkpoint_dir: Path | None = None, restart: bool = False
) -> tuple[Path, ModelCard]:
    """Train the zoo model ``name`` into ``out_dir`` (default: the package's zoo), resuming from ``checkpoint_dir``
    (default ``~/.cache/modmask-lens/zoo-checkpoints/NAME``) unless ``restart``."""
    recipe_ = recipe(name)
    out_dir = out_dir or zoo.MODELS_DIR / recipe_.name
    checkpoint_dir = checkpoint_dir or Path.home() / ".cache" / "modmask-lens" / "zoo-checkpoints" / recipe_.name
    card = train(recipe_, out_dir, checkpoint_dir, f"modmask-lens zoo train {recipe_.name}", restart)
    _log(f"wrote {out_dir} ({card.parameter_count:,} parameters, {card.wall_time_s:.0f} s)")
    return out_dir, card
