"""`llavakit train`: fine-tune a LLaVA checkpoint on LLaVA-format or messages-style JSON data.

Stages: stage1 (projector only), stage2 (projector + language model), lora / qlora (peft adapters on the
language model + full projector), full (everything, for training from scratch).
`--task sequence-classification` / `multiple-choice` fine-tunes a task head instead (its head always trains).
Several processes: `--nproc-per-node N` (re-runs itself under torchrun; or start it with `torchrun ... -m llavakit
train ...`, also across nodes) trains data parallel with DDP, or with FSDP2 sharding under `--fsdp`;
`--ray ADDRESS --num-workers N` runs the same on Ray Train.
"""

from __future__ import annotations

import argparse
import os
import random

from llavakit.cli.common import add_model_argument, model_path, read_template


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a LLaVA model", description=__doc__)
    add_model_argument(p)
    p.add_argument("--data", required=True, help="training data: a JSON list or JSONL of LLaVA/messages records")
    p.add_argument("--image-folder", default=None, help="folder that relative image paths are resolved against")
    p.add_argument("--eval-data", default=None, help="held-out data (default: --eval-split of --data)")
    p.add_argument("--eval-split", type=float, default=0.0, help="fraction of --data held out for eval loss")
    p.add_argument("--output-dir", required=True, help="folder for the trained model (or adapter), logs, checkpoints")
    p.add_argument("--stage", default="stage2", choices=["stage1", "stage2", "lora", "qlora", "full"],
                   help="what trains: stage1 projector; stage2 projector + language model; lora/qlora adapters; "
                        "full everything")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data (ignored with --max-steps)")
    p.add_argument("--max-steps", type=int, default=-1, help="optimizer steps; -1 means --epochs decides")
    p.add_argument("--batch-size", type=int, default=4, help="samples per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 1e-3 stage1, 2e-5 stage2 and full, 2e-4 lora/qlora; "
                        "from-scratch training wants more, e.g. 5e-4)")
    p.add_argument("--projector-lr", type=float, default=None, help="learning rate of the projector (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (matrices only)")
    p.add_argument("--warmup-ratio", type=float, default=0.03, help="fraction of steps with linear warm-up")
    p.add_argument("--max-length", type=int, default=2048, help="tokens per sample, image tokens included")
    p.add_argument("--num-frames", type=int, default=8,
                   help="frames sampled evenly from each video of LLaVA-Video records ({video, conversations}); "
                        "video models only")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    p.add_argument("--group-by-modality-length", action="store_true",
                   help="batch image and text-only samples apart, of similar lengths (as LLaVA does)")
    p.add_argument("--logging-steps", type=int, default=10, help="steps between log lines")
    p.add_argument("--eval-steps", type=int, default=0, help="steps between eval losses (0: at the end only)")
    p.add_argument("--save-steps", type=int, default=0, help="steps between resumable checkpoints (0: none)")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in --output-dir")
    p.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and dropout")
    p.add_argument("--lora-r", type=int, default=128, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, default=256, help="LoRA scale numerator (scale = alpha / r)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the LoRA branch")
    p.add_argument("--chat-template", default=None,
                   help="a built-in template name or a .jinja file (default: the checkpoint's)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--task", default="generation", choices=["generation", "sequence-classification", "multiple-choice"],
                   help="sequence-classification: records with a 'label'; multiple-choice: eval-mc rows "
                        "{image, question, options, answer}, trains the head's classifier")
    p.add_argument("--num-labels", type=int, default=None, help="sequence-classification: number of labels")
    p.add_argument("--labels", default=None, help="sequence-classification: comma-separated label names (index order)")
    p.add_argument("--problem-type", default=None,
                   choices=["regression", "single_label_classification", "multi_label_classification"],
                   help="default: inferred from the labels, as transformers does")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="processes (GPUs) on this machine: re-runs the command under torchrun, data parallel")
    p.add_argument("--fsdp", action="store_true",
                   help="with several processes: shard parameters, gradients and optimizer state (FSDP2) instead "
                        "of a whole model per process (DDP)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="train on Ray Train: 'local' starts a local instance, 'auto' or ray://HOST:PORT joins a "
                        "cluster, bare --ray follows RAY_ADDRESS")
    p.add_argument("--num-workers", type=int, default=2, help="--ray: training processes (one per GPU)")
    p.add_argument("--gpus-per-worker", type=float, default=0,
                   help="--ray: GPUs per worker (0: CPU workers over gloo)")
    p.set_defaults(run=run)


# "full" fine-tunes every weight of a pretrained model: as gentle as stage2 (from scratch, pass a larger --lr)
DEFAULT_LR = {"stage1": 1e-3, "stage2": 2e-5, "lora": 2e-4, "qlora": 2e-4, "full": 2e-5}


def run(args: argparse.Namespace) -> int:
    import torch

    from llavakit import AutoModelForImageTextToText, AutoProcessor
    from llavakit.cli.eval_mc import read_rows
    from llavakit.distributed.setup import init_distributed, rank, world_size
    from llavakit.training.checkpoint import full_model_state
    from llavakit.training import freeze, heads, loop
    from llavakit.training.data import Collator, SupervisedDataset, load_records

    # Everything that can be wrong with the command line or the data fails before the model loads.
    template = read_template(args.chat_template)
    read = read_rows if args.task == "multiple-choice" else load_records
    records = read(args.data)
    eval_records = read(args.eval_data) if args.eval_data else []
    if not records:
        raise ValueError(f"no trainable samples: {args.data} holds no records")
    if args.stage in ("lora", "qlora"):
        from llavakit.training.lora import check_lora_available

        check_lora_available()
    if args.stage == "qlora":
        from llavakit.training.lora import check_qlora_available

        check_qlora_available()
        if args.task != "generation":
            raise ValueError("--stage qlora supports --task generation only; use --stage lora for task heads")
    exit_code = _start_processes(args)
    if exit_code is not None:
        return exit_code
    device = init_distributed()  # one rank of torchrun's (or Ray's) process group; nothing in a single process
    main_rank = rank() == 0
    model_name = model_path(args)

    torch.manual_seed(args.seed)
    processor = AutoProcessor.from_pretrained(model_name)
    if args.task == "generation":
        if args.stage == "qlora":  # the language model in 4-bit nf4, the rest in float32
            from llavakit.training.lora import load_qlora_base

            model = load_qlora_base(model_name, compute_dtype="bfloat16" if args.bf16 else "float32",
                                    gradient_checkpointing=args.gradient_checkpointing)
        else:
            model = AutoModelForImageTextToText.from_pretrained(model_name, dtype="float32")
        freeze.apply_stage(model, args.stage)
    else:
        labels = {}
        if args.labels:
            names = [name.strip() for name in args.labels.split(",")]
            labels = {"num_labels": len(names), "id2label": dict(enumerate(names))}
            if args.num_labels is not None and args.num_labels != len(names):
                raise ValueError(f"--num-labels {args.num_labels} disagrees with the {len(names)} --labels names")
        elif args.num_labels is not None:
            labels = {"num_labels": args.num_labels}
        model = heads.load_head(model_name, args.task, processor.tokenizer.pad_token_id,
                                problem_type=args.problem_type, **labels)
        heads.apply_stage(model, args.stage)
    config = model.config
    if args.stage in ("lora", "qlora"):
        from llavakit.training.lora import add_lora

        model = add_lora(model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)
        if args.task != "generation":
            heads.unfreeze_head(model)
    if device.type != "cpu" and not args.fsdp:  # fully_shard moves only this rank's shards to the GPU
        model.to(device)
    if main_rank:
        print(f"[llavakit train] {args.stage}: {freeze.trainable_summary(model)}"
              + (f" | {world_size()} processes, {'FSDP' if args.fsdp else 'DDP'}" if world_size() > 1 else ""))

    if not eval_records and args.eval_split > 0:
        random.Random(args.seed).shuffle(records)
        n_eval = max(1, int(len(records) * args.eval_split))
        eval_records, records = records[:n_eval], records[n_eval:]
    options = dict(image_folder=args.image_folder, max_length=args.max_length, chat_template=template)
    pad = processor.tokenizer.pad_token_id
    if pad is None:
        raise ValueError("the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token)")
    if args.task == "generation":
        options["num_frames"] = args.num_frames
        train_set, collate = SupervisedDataset(records, processor, **options), Collator(pad)
        eval_set = SupervisedDataset(eval_records, processor, **options) if eval_records else None
    else:
        train_set, collate = heads.dataset_and_collator(args.task, records, processor, config, **options)
        eval_set = heads.dataset_and_collator(args.task, eval_records, processor, config, **options)[0] \
            if eval_records else None

    training_args = loop.TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr if args.lr is not None else DEFAULT_LR[args.stage], projector_lr=args.projector_lr,
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing, group_by_modality_length=args.group_by_modality_length,
        logging_steps=args.logging_steps, eval_steps=args.eval_steps, save_steps=args.save_steps, seed=args.seed,
        resume_from_checkpoint=True if args.resume else None, disable_progress=args.quiet, fsdp=args.fsdp)
    loop.train(model, training_args, train_set, collate, eval_set)
    if train_set.skipped and main_rank:
        print(f"[llavakit train] skipped {len(train_set.skipped)} training sample(s) (see the log above)")

    state = full_model_state(model)  # FSDP: every rank sends its shards to rank 0; otherwise None
    if main_rank:  # the final model is written once
        if args.stage in ("lora", "qlora") and args.task != "generation":
            model.merge_and_unload().save_pretrained(args.output_dir)  # a head checkpoint: adapters merged in
        elif args.stage in ("lora", "qlora"):
            from llavakit.training.lora import save_adapter

            save_adapter(model, args.output_dir, state_dict=state)
        else:
            model.save_pretrained(args.output_dir, state_dict=state)
        if args.chat_template is not None:
            processor.chat_template = train_set.template
        processor.save_pretrained(args.output_dir)
        print(f"[llavakit train] saved to {args.output_dir}")
    if world_size() > 1:
        torch.distributed.barrier()
    return 0


def _start_processes(args: argparse.Namespace) -> int | None:
    """--ray or --nproc-per-node: run the command on Ray Train or under torchrun and return its exit code;
    None when this process trains (alone, or as one rank started by torchrun or Ray)."""
    from llavakit.distributed.launch import relaunch, under_torchrun
    from llavakit.training.distributed import check_strategy

    check_strategy(args.fsdp, args.stage)
    if args.fsdp and args.stage in ("lora", "qlora") and args.task != "generation":
        raise ValueError("--fsdp with a LoRA task head is not supported (merging adapters needs the whole model); "
                         "train it without --fsdp")
    if args.nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if under_torchrun():
        if args.ray is not None:
            raise ValueError("--ray cannot run inside torchrun: start it as a plain command")
        started = int(os.environ.get("LOCAL_WORLD_SIZE", args.nproc_per_node))
        if args.nproc_per_node > 1 and started != args.nproc_per_node:
            raise ValueError(f"--nproc-per-node {args.nproc_per_node} but torchrun started "
                             f"{os.environ['LOCAL_WORLD_SIZE']} processes on this node; make them equal")
        return None
    if args.ray is not None:
        if args.nproc_per_node > 1:
            raise ValueError("--ray and --nproc-per-node exclude each other: on Ray, scale with --num-workers")
        from llavakit.training.ray_train import strip_ray_flags, train_on_ray

        train_on_ray(strip_ray_flags(args.argv), args.ray or None, args.num_workers, args.gpus_per_worker,
                     args.output_dir)
        print(f"[llavakit train] saved to {args.output_dir}")
        return 0
    if args.nproc_per_node == 1:
        return None
    import torch

    if torch.cuda.is_available() and args.nproc_per_node > torch.cuda.device_count():
        raise ValueError(f"--nproc-per-node {args.nproc_per_node} needs that many GPUs, but "
                         f"{torch.cuda.device_count()} are visible")
    return relaunch(args.argv, args.nproc_per_node)
