"""GPT-2 size presets, importable without torch (the config checks them).

name -> (n_layer, n_head, n_embd). The four GPT-2 sizes as OpenAI released
them, plus two small ones for CPU tests and CI.
"""
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 2, 64),
    "mini": (4, 4, 128),
    "124M": (12, 12, 768),
    "350M": (24, 16, 1024),
    "774M": (36, 20, 1280),
    "1.5B": (48, 25, 1600),
}
