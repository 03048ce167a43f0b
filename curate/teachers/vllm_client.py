"""A teacher run in this process by vLLM (`pip install 'curate[vllm]'`), for GPU batch generation.

The model is loaded when the client is made (in the main thread: vLLM may set up signal
handlers and worker processes there), only when a step has requests for it. The dispatcher
then hands it requests in chunks of `chunk_size`; `generate` runs one chunk through
`vllm.LLM.chat` in a worker thread, so the event loop keeps serving HTTP teachers, and the
dispatcher caches the chunk's answers before the next chunk starts: a crash loses at most one
chunk, and Ctrl-C waits for the chunk in progress. vLLM is imported only when a vllm teacher
is used.
"""

from __future__ import annotations

from typing import Any

from curate.errors import MissingDependencyError
from curate.schemas.spec import VLLMTeacher
from curate.teachers.budget import token_cost
from curate.teachers.requests import Answer, Request, split_reasoning


class VLLMClient:
    """One vllm.LLM, loaded here."""

    def __init__(self, name: str, teacher: VLLMTeacher) -> None:
        self.name = name
        self.teacher = teacher
        self.model = teacher.model
        self.chunk_size = teacher.chunk_size
        self._llm: Any = None
        self._load()

    def _load(self) -> Any:
        if self._llm is None:
            try:
                import vllm
            except ImportError:
                raise MissingDependencyError(
                    package="vllm", extra="vllm", feature=f"teacher '{self.name}' (provider vllm)"
                ) from None
            t = self.teacher
            self._llm = vllm.LLM(
                model=t.model,
                tensor_parallel_size=t.tensor_parallel_size,
                max_model_len=t.max_model_len,
                gpu_memory_utilization=t.gpu_memory_utilization,
                dtype=t.dtype,
                **t.engine_args,
            )
        return self._llm

    def generate(self, requests: list[Request], seeds: list[int | None]) -> list[list[Answer]]:
        """Answers of one chunk of requests, one list per request (one answer per sample)."""
        import vllm

        llm = self._load()
        params = [
            vllm.SamplingParams(
                n=r.n,
                temperature=1.0 if r.temperature is None else r.temperature,
                top_p=1.0 if r.top_p is None else r.top_p,
                max_tokens=r.max_tokens,
                seed=seed,
            )
            for r, seed in zip(requests, seeds, strict=True)
        ]
        outputs = llm.chat([r.messages for r in requests], params, use_tqdm=False)
        results = []
        for request, seed, output in zip(requests, seeds, outputs, strict=True):
            prompt_tokens = len(output.prompt_token_ids or [])
            answers = []
            for i, choice in enumerate(output.outputs):
                reasoning, content = split_reasoning(choice.text)
                completion_tokens = len(choice.token_ids)
                share = prompt_tokens // request.n + (1 if i < prompt_tokens % request.n else 0)
                answers.append(
                    Answer(
                        completion=content,
                        reasoning=reasoning,
                        finish_reason=choice.finish_reason,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        max_tokens=request.max_tokens,
                        seed=seed,
                        billed_prompt_tokens=share,
                        billed_completion_tokens=completion_tokens,
                        cost_usd=token_cost(
                            share,
                            completion_tokens,
                            input_usd=self.teacher.input_usd_per_mtok,
                            output_usd=self.teacher.output_usd_per_mtok,
                        ),
                    )
                )
            results.append(answers)
        return results

    async def aclose(self) -> None:
        """Nothing to close: the engine lives as long as the process."""
