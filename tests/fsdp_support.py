"""Worker of tests/test_fsdp_cpu.py, started by torchrun: one FSDP step on gloo CPU processes.

argv: STANDIN OUT. Each rank takes its half of one global batch; rank 0 also steps an unsharded copy on
the whole batch, then writes the consolidated weights (released layout) and both models' results."""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from model import DiffusionLM
from model.network import DecoderLayer


def loss_of(lm, tokens):
    logits = lm(tokens).logits.float()  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())


def main(standin: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    tokens = torch.randint(3, 500, (4, 16))  # the global batch, the same on every rank
    lm = DiffusionLM.from_pretrained(standin, dtype=torch.float32).train()
    lm.gradient_checkpointing = True
    reference = DiffusionLM.from_pretrained(standin, dtype=torch.float32).train()
    reference.gradient_checkpointing = True
    mesh = init_device_mesh("cpu", (world,))
    for layer in lm.modules():
        if isinstance(layer, DecoderLayer):
            fully_shard(layer, mesh=mesh)
    sharded = fully_shard(lm, mesh=mesh)
    opt = torch.optim.SGD(sharded.parameters(), lr=0.5)
    mine = tokens.chunk(world)[rank]
    loss_of(sharded, mine).backward()  # FSDP averages the gradients over ranks: the global batch's mean
    opt.step()
    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
        loss_of(reference, tokens).backward()
        ref_opt.step()
        consolidated = DiffusionLM(reference.config)
        consolidated.load_state_dict(full)
        consolidated.save_pretrained(out)
        reference.eval()
        with torch.no_grad():
            torch.save({"reference": reference.state_dict(), "sharded": full, "tokens": tokens,
                        "logits": reference(tokens).logits}, f"{out}/compare.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
