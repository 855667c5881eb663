"""Model loading and generation for the built-in server: one worker thread, a bounded FIFO queue, batches.

Why one worker: a transformers model is not safe to call from several threads at once (shared KV-cache
objects, global RNG for sampling). Instead the worker takes the oldest request plus up to --max-batch - 1
waiting ones that decode the same way (greedy, or the same temperature and top_p) and runs them as one
left-padded `generate`: each row keeps its own attention mask, token budget, stop sequences and stream,
so requests share the matrix multiplies but never each other's output. A request with a seed runs alone
so that its sampling stays reproducible.

Vision-language models (is_vision_model: a vision_config, or a processor config with an image processor) load
with their processor, which turns each image into pixel values and its place in the prompt into image tokens.
Requests with images batch like text ones: each row's token-type ids (which tokens are image tokens) are
left-padded with its ids, and the pixel values and image grids of all rows are concatenated in row order, the
order in which the model's M-RoPE index (computed per row over the unpadded tokens) consumes them.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

LOG = logging.getLogger("autoglm_serve")


# Characters tokenized at a time while counting a long prompt. Its length in characters says nothing sure about
# its length in tokens (a token can be one byte of an emoji or a dozen characters), so a long prompt is counted
# in pieces, stopping once it is surely over the context, instead of being tokenized whole first.
COUNT_CHUNK = 4096
# Processor outputs with one value per prompt token (GLM-4.1V's, Qwen2-VL's: which tokens are image tokens); the
# others (pixel_values, image_grid_thw...) have one entry per image patch or image.
PER_TOKEN_INPUTS = frozenset({"mm_token_type_ids", "token_type_ids"})


def _json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_vision_model(model_path: str) -> bool:
    """Whether the model reads images: config.json has a vision_config, or a processor config an image processor."""
    root = Path(model_path)
    if isinstance(_json_file(root / "config.json").get("vision_config"), dict):
        return True
    processor = _json_file(root / "processor_config.json")
    return bool(_json_file(root / "preprocessor_config.json").get("image_processor_type")
                or "image_processor" in processor or processor.get("image_processor_type"))


class QueueFull(Exception):
    """The generation queue holds --max-queue requests already."""


class PromptTooLong(Exception):
    """The prompt is surely longer than the context: counted past twice its size, piece by piece."""

    def __init__(self, at_least: int) -> None:
        super().__init__("the prompt is more than %d tokens" % at_least)
        self.at_least = at_least


@dataclass
class Sampling:
    """What one request asks of generation (already validated)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # OpenAI's penalties over the tokens generated so far: logit -= frequency x count + presence x (count > 0).
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


@dataclass
class Result:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    stream: bool
    # The processor's other outputs for generate (pixel_values, image_grid_thw...) when the prompt has images.
    image_inputs: dict[str, Any] | None = None
    # ("delta", str) while streaming, then ("done", Result) or ("error", str).
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None


class TextTracker:
    """Turns generated token ids into text deltas; finds stop sequences; holds back text a stop could still claim.

    Incremental decoding keeps a small window of ids (prefix/read offsets) so each step costs O(1) decodes
    and multi-token characters are only emitted once complete (no U+FFFD halves).
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], eos_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.eos_ids = set(eos_ids)
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None
        self.hit_stop = False
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> None:
        if self.finish_reason is not None:
            return
        self.ids.append(token_id)
        if token_id in self.eos_ids:
            self.finish_reason = "stop"
            return
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            start = max(0, len(self.text) - self.hold)
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
            self._cut_at_stop(start)

    def _cut_at_stop(self, start: int) -> None:
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.finish_reason = "stop"
            self.hit_stop = True

    def finish(self) -> None:
        """Settle the final text: unless a stop sequence already cut it, the whole decode (bytes still held), cut at a stop."""
        if not self.hit_stop:
            self.text = self._decode(self.ids)
            self._cut_at_stop(0)
        if self.finish_reason is None:
            self.finish_reason = "length"

    def pending_delta(self, final: bool = False) -> str:
        """Text not yet streamed that no stop sequence can still swallow."""
        limit = len(self.text) if final or self.finish_reason is not None else max(self.emitted, len(self.text) - self.hold)
        delta = self.text[self.emitted:limit]
        self.emitted = max(self.emitted, limit)
        return delta


class Engine:
    """Loads the model in the background (health says 503 until it is ready) and runs the generation worker."""

    def __init__(self, model_path: str, device: str = "auto", dtype: str = "auto", max_queue: int = 64,
                 max_model_len: int | None = None, max_batch: int = 8, batch_wait: float = 0.01) -> None:
        self.model_path = model_path
        self.device_name = device
        self.dtype_name = dtype
        self.max_model_len = max_model_len
        self.load_seconds: float | None = None
        self.load_error: str | None = None
        self.ready = threading.Event()
        self.vision = is_vision_model(model_path)
        self.processor: Any = None
        self.chat_template: str | None = None
        self.tokenizer: Any = None
        self.model: Any = None
        self.device: Any = None
        self.max_queue = max_queue
        self.max_batch = max(1, max_batch)
        self.batch_wait = batch_wait
        self._last_batch_size = 1
        self._waiting: deque[Job] = deque()
        self._arrived = threading.Condition()
        # For /metrics: requests per batch = rate(batched_requests) / rate(batches).
        self.batches = 0
        self.batched_requests = 0

    # Loading -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Import torch/transformers and load weights and tokenizer from the local directory only."""
        started = time.monotonic()
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        if self.device_name == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(self.device_name)
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.dtype_name == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = dtypes[self.dtype_name]
        # local_files_only: the weights were fetched and verified by the deployment; never reach a hub here.
        if self.vision:
            self.processor = AutoProcessor.from_pretrained(self.model_path, local_files_only=True)
            self.tokenizer = self.processor.tokenizer
            model_class = AutoModelForImageTextToText
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            model_class = AutoModelForCausalLM
        self.chat_template = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if not self.chat_template:
            raise ValueError("the tokenizer in %s has no chat template (tokenizer_config.json chat_template or "
                             "chat_template.jinja); the chat endpoint needs one" % self.model_path)
        model = model_class.from_pretrained(self.model_path, local_files_only=True, dtype=dtype)
        self.model = model.to(self.device).eval()
        # A vision model keeps its language model's context in text_config (get_text_config: the config itself otherwise).
        config_len = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if self.max_model_len is None:
            self.max_model_len = int(config_len or 4096)
        self.load_seconds = time.monotonic() - started
        threading.Thread(target=self._worker, name="generation", daemon=True).start()
        self.ready.set()
        LOG.info("model %s loaded on %s (%s) in %.1f s", self.model_path, self.device, dtype, self.load_seconds)

    # Requests ------------------------------------------------------------------------------------
    def chat_text(self, messages: list[dict[str, Any]], limit: int | None = None) -> str:
        """The prompt as text (the chat template applied); PromptTooLong, without tokenizing it whole, when it is
        far over `limit` tokens. Image parts ({"type": "image"}) become the template's image placeholders."""
        # The tokenizer renders the template (a vision model's is its processor's): nothing here loads an image,
        # which the processor's own apply_chat_template would do from the urls.
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **({"chat_template": self.chat_template} if self.vision else {}))
        if limit is not None and len(text) > COUNT_CHUNK:
            counted = self._count_tokens(text, stop_over=2 * limit)
            if counted > 2 * limit:
                raise PromptTooLong(counted)
        return text

    def render_prompt(self, messages: list[dict[str, Any]], limit: int | None = None) -> list[int]:
        """The prompt's token ids; PromptTooLong, without tokenizing it whole, when it is far over `limit` tokens."""
        # The template already carries any BOS it wants.
        return list(self.tokenizer(self.chat_text(messages, limit), add_special_tokens=False)["input_ids"])

    def encode_images(self, text: str, images: list[Any], size: dict[str, int]) -> tuple[list[int], dict[str, Any]]:
        """The prompt's ids with each image's tokens in place of its placeholder, and the pixel inputs for generate.

        size caps the pixels the processor scales each image to (GLM-4.1V's processor honours size, not max_pixels)."""
        inputs = self.processor(text=[text], images=images, size=size, return_tensors="pt")
        ids = inputs.pop("input_ids")[0].tolist()
        inputs.pop("attention_mask", None)
        return ids, dict(inputs)

    def _count_tokens(self, text: str, stop_over: int) -> int:
        """Tokens of text counted COUNT_CHUNK characters at a time, stopping once over stop_over.

        Pieces end before a space where there is one, so the sum is close to the whole text's count; a piece
        boundary can still add or save a token, so the caller trusts it only to say "far over" (twice the
        limit) and tokenizes anything closer whole. Work and memory stay bounded by stop_over, not by the text.
        """
        count, start = 0, 0
        while start < len(text) and count <= stop_over:
            end = start + COUNT_CHUNK
            if end < len(text):
                space = text.rfind(" ", start + COUNT_CHUNK // 2, end)
                end = space if space > start else end
            count += len(self.tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
            start = end
        return count

    def submit(self, job: Job) -> None:
        with self._arrived:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull()
            self._waiting.append(job)
            self._arrived.notify()

    def queue_depth(self) -> int:
        return len(self._waiting)

    def eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        if ids is None:
            return []
        return list(ids) if isinstance(ids, (list, tuple)) else [int(ids)]

    # Generation ----------------------------------------------------------------------------------
    @staticmethod
    def _batch_key(job: Job) -> tuple | None:
        """Requests with equal keys decode alike and may share a batch; None runs alone (seeded sampling)."""
        sampling = job.sampling
        penalties = (sampling.frequency_penalty, sampling.presence_penalty)
        if sampling.temperature <= 0:
            return ("greedy", *penalties)
        if sampling.seed is not None:
            return None
        return ("sample", sampling.temperature, sampling.top_p, *penalties)

    def _take_alike(self, batch: list[Job], key: tuple) -> None:
        """Move waiting requests with this key into batch, in arrival order, up to max_batch; drop cancelled ones."""
        for job in list(self._waiting):
            if len(batch) >= self.max_batch:
                return
            if job.cancelled.is_set() or self._batch_key(job) == key:
                self._waiting.remove(job)
                if not job.cancelled.is_set():
                    batch.append(job)

    def _next_batch(self) -> list[Job]:
        """The oldest waiting request and, in arrival order, up to max_batch - 1 others it can share a batch with.

        Under concurrent load the clients of the batch just answered send their next requests a few ms apart;
        starting at once would split them into a batch of one and a batch of the rest. So when the last batch
        was bigger than this one, wait up to batch_wait seconds for as many as it had. A lone client never waits.
        """
        with self._arrived:
            while True:
                while not self._waiting:
                    self._arrived.wait()
                first = self._waiting.popleft()
                if not first.cancelled.is_set():
                    break
            batch, key = [first], self._batch_key(first)
            if key is not None:
                self._take_alike(batch, key)
                expected = min(self.max_batch, self._last_batch_size)
                deadline = time.monotonic() + self.batch_wait
                while len(batch) < expected and time.monotonic() < deadline:
                    self._arrived.wait(deadline - time.monotonic())
                    self._take_alike(batch, key)
            self._last_batch_size = len(batch)
            return batch

    def _worker(self) -> None:
        while True:
            batch = self._next_batch()
            started = time.monotonic()
            for job in batch:
                job.started_at = started
            self.batches += 1
            self.batched_requests += len(batch)
            try:
                results = self.generate_batch(batch)
            except Exception as exc:  # one bad batch must not kill the worker
                LOG.exception("generation failed")
                for job in batch:
                    job.events.put(("error", "%s: %s" % (type(exc).__name__, exc)))
                continue
            for job, result in zip(batch, results):
                job.events.put(("done", result))

    def generate(self, job: Job) -> Result:
        return self.generate_batch([job])[0]

    def generate_batch(self, jobs: Sequence[Job]) -> list[Result]:
        """One `generate` for all jobs (same decoding settings), prompts left-padded; one Result per job."""
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        eos_ids = self.eos_ids()
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos_ids or [0])[0]
        trackers = [TextTracker(self.tokenizer, job.sampling.stop, eos_ids) for job in jobs]
        closed = [False] * len(jobs)

        class Tap(StoppingCriteria):
            """Sees each row's new token before the next step: decodes, streams, and closes the row on its stop
            sequence, its own max_tokens or a cancel; generate pads closed rows until every row is closed."""

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                for row, (job, tracker) in enumerate(zip(jobs, trackers)):
                    if closed[row]:
                        continue
                    tracker.add(int(input_ids[row, -1]))
                    if job.stream:
                        delta = tracker.pending_delta()
                        if delta:
                            job.events.put(("delta", delta))
                    closed[row] = (tracker.finish_reason is not None or len(tracker.ids) >= job.sampling.max_tokens
                                   or job.cancelled.is_set())
                return torch.tensor(closed, dtype=torch.bool, device=input_ids.device)

        width = max(len(job.prompt_ids) for job in jobs)

        class Penalties(LogitsProcessor):
            """OpenAI's frequency and presence penalties (the batch shares them, _batch_key), counted over the
            generated tokens only, as vLLM does."""

            def __call__(self, input_ids: Any, scores: Any) -> Any:
                generated = input_ids[:, width:]
                if generated.shape[1] == 0:
                    return scores
                counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
                return scores - sampling.frequency_penalty * counts - sampling.presence_penalty * (counts > 0).to(scores.dtype)

        sampling = jobs[0].sampling
        kwargs: dict[str, Any] = {"max_new_tokens": max(job.sampling.max_tokens for job in jobs),
                                  "stopping_criteria": StoppingCriteriaList([Tap()]), "pad_token_id": pad_id}
        if sampling.frequency_penalty or sampling.presence_penalty:
            kwargs["logits_processor"] = LogitsProcessorList([Penalties()])
        if sampling.temperature <= 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=None)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        input_ids = torch.tensor([[pad_id] * (width - len(job.prompt_ids)) + list(job.prompt_ids) for job in jobs],
                                 dtype=torch.long, device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(job.prompt_ids)) + [1] * len(job.prompt_ids) for job in jobs],
                                      dtype=torch.long, device=self.device)
        kwargs.update(self._batch_image_inputs(jobs, width))
        with torch.inference_mode():
            self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        results = []
        for job, tracker in zip(jobs, trackers):
            tracker.finish()
            if job.stream:
                tail = tracker.pending_delta(final=True)
                if tail:
                    job.events.put(("delta", tail))
            results.append(Result(text=tracker.text, finish_reason=tracker.finish_reason or "length",
                                  prompt_tokens=len(job.prompt_ids), completion_tokens=len(tracker.ids)))
        return results

    def _batch_image_inputs(self, jobs: Sequence[Job], width: int) -> dict[str, Any]:
        """The processor's outputs of every row with images, as one batch's generate arguments.

        Per-token outputs (PER_TOKEN_INPUTS, shaped like a row's ids) are left-padded with zeros as the ids are,
        and rows without images get zeros; per-image outputs (pixel values, grids) are concatenated in row order.
        """
        import torch

        with_images = [job for job in jobs if job.image_inputs is not None]
        if not with_images:
            return {}
        names = {name for job in with_images for name in job.image_inputs}
        inputs: dict[str, Any] = {}
        for name in sorted(names):
            if name in PER_TOKEN_INPUTS:
                rows = []
                for job in jobs:
                    row = (job.image_inputs or {}).get(name)
                    row = row[0] if row is not None else torch.zeros(len(job.prompt_ids), dtype=torch.int)
                    rows.append(torch.cat([torch.zeros(width - len(job.prompt_ids), dtype=row.dtype), row]))
                inputs[name] = torch.stack(rows).to(self.device)
            else:
                inputs[name] = torch.cat([job.image_inputs[name] for job in with_images if name in job.image_inputs]
                                         ).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def gpu_memory(self) -> list[tuple[str, dict[str, str], float]]:
        """Allocated/reserved bytes per CUDA device, for /metrics; nothing on a CPU node."""
        if self.device is None or self.device.type != "cuda":
            return []
        import torch

        samples = []
        for index in range(torch.cuda.device_count()):
            gpu = {"gpu": str(index)}
            samples.append(("autoglm_serve_gpu_memory_allocated_bytes", gpu, float(torch.cuda.memory_allocated(index))))
            samples.append(("autoglm_serve_gpu_memory_reserved_bytes", gpu, float(torch.cuda.memory_reserved(index))))
        return samples
