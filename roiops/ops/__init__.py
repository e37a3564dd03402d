"""The ops as ``torch.library`` custom ops: schema, fake impl, autograd, backend dispatch."""
