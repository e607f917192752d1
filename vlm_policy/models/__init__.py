"""Models that ship with the package: the embedded tiny VLM (``model="tiny"``) and random models of the
real architectures (LLaVA, Qwen2-VL, Idefics3) used to exercise every real-checkpoint code path offline."""
