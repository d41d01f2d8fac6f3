//! The `fix` report: per file, each hunk of the diff after its explanations; then notes.
//! Words come from the catalogue below (English and Chinese).
use super::apply::Applied;
use super::{Knob, Patch};
use crate::report::{fill, Document, Lang};

crate::catalogue! { pub enum M {
    // Report words.
    Title => ("oomdoc fix: {}", "oomdoc fix：{}"),
    Setup => ("training set-up", "训练方式"),
    Changes => ("files changed", "修改的文件"),
    Requested => ("requested", "要求的设置"),
    NoChanges => ("No file needs a change: the project already does what was asked, or nothing could be edited (see the notes).", "没有文件需要修改：项目已经是所要求的设置，或者没有可以自动修改的地方（见注意事项）。"),
    NotesTitle => ("Notes", "注意事项"),
    PartOfAbove => ("(part of the change explained above)", "（上面所述修改的一部分）"),
    ApplyHint => ("This is a preview. Run again with --apply to write it (a backup of each file is kept as FILE.orig), or pipe `--patch` output into `git apply`.", "以上仅为预览。加 --apply 再运行即写入（每个文件的原件保存为 FILE.orig），或将 `--patch` 的输出交给 `git apply`。"),
    WroteTitle => ("Written", "已写入"),
    Wrote => ("{0} (backup: {1})", "{0}（备份：{1}）"),
    // Explanations and notes.
    ImportAdded => ("Adds `{0}`, used by the change below.", "添加 `{0}`，供下面的修改使用。"),
    NoBf16 => ("{0} has no native bf16: {1} becomes {2}.", "{0} 不支持原生 bf16：{1} 改为 {2}。"),
    Bf16Unchecked => ("bf16 needs an Ampere (compute capability 8.0) or newer GPU; pass --gpu NAME to check, or run: python -c \"import torch; print(torch.cuda.is_bf16_supported())\".", "bf16 需要 Ampere（计算能力 8.0）或更新的 GPU；用 --gpu NAME 检查，或运行：python -c \"import torch; print(torch.cuda.is_bf16_supported())\"。"),
    SplatKwargs => ("{0}: {1}= is added to a call that also takes {2}; if {2} holds {1} too, Python raises TypeError: remove it there.", "{0}：向同时接收 {2} 的调用添加了 {1}=；如果 {2} 中也有 {1}，Python 会抛出 TypeError：请从那里删除。"),
    ReplacedExpr => ("{0}: `{1}` could not be followed to where it is set; it is replaced by {2} in place.", "{0}：无法追踪 `{1}` 的来源；已在原处替换为 {2}。"),
    Overlap => ("{0}: two changes touch the same code; only the first was kept.", "{0}：两处修改重叠，只保留了第一处。"),
    LrSame => ("The effective batch (batch x accumulation) stays {0}: keep the learning rate.", "有效batch_size（批次大小 x 累积步数）仍为 {0}：学习率不变。"),
    LrScale => ("The effective batch changes from {0} to {1}. The learning rate ({2}: {3}) was not changed; the linear scaling rule (Goyal et al., 2017) gives {4}. For Adam-type optimizers a square-root rule or a short sweep is safer.", "有效batch_size 从 {0} 变为 {1}。学习率（{2}：{3}）未修改；按线性缩放规则（Goyal 等，2017）应为 {4}。Adam 类优化器用平方根规则或小范围搜索更稳妥。"),
    LrScaleUnknown => ("The effective batch changes from {0} to {1}: scale the learning rate with it (linear rule) or re-tune it.", "有效batch_size 从 {0} 变为 {1}：请相应缩放学习率（线性规则）或重新调参。"),
    AllocScriptExisting => ("The launch script already sets PYTORCH_CUDA_ALLOC_CONF ({0}); it is set to the requested value.", "启动脚本已设置 PYTORCH_CUDA_ALLOC_CONF（{0}），改为所要求的值。"),
    AllocScript => ("PYTORCH_CUDA_ALLOC_CONF is read when PyTorch starts CUDA, so it goes into the environment of the launch script {0}; expandable segments let the allocator grow a segment instead of leaving fragmented free blocks.", "PYTORCH_CUDA_ALLOC_CONF 在 PyTorch 初始化 CUDA 时读取，因此写入启动脚本 {0} 的环境；expandable_segments 让分配器扩展段，而不是留下碎片化的空闲块。"),
    AllocExisting => ("{0} already sets PYTORCH_CUDA_ALLOC_CONF ({1}); it is set to the requested value there.", "{0} 已设置 PYTORCH_CUDA_ALLOC_CONF（{1}），在原处改为所要求的值。"),
    AllocComputed => ("{0} sets PYTORCH_CUDA_ALLOC_CONF from a computed value; it was left as is: make it {1}.", "{0} 用计算得到的值设置 PYTORCH_CUDA_ALLOC_CONF，保持不变：请改为 {1}。"),
    AllocReadme => ("No launch script found: the README now says to set PYTORCH_CUDA_ALLOC_CONF before training.", "未找到启动脚本：在 README 中说明训练前设置 PYTORCH_CUDA_ALLOC_CONF。"),
    AllocEntry => ("No launch script or README: {0} sets it before torch is imported (the allocator reads it when CUDA starts).", "没有启动脚本或 README：在 {0} 中导入 torch 之前设置（分配器在 CUDA 初始化时读取）。"),
    HfCliNoArgs => ("TrainingArguments are parsed with HfArgumentParser, but no launch script (--per_device_train_batch_size ...) or JSON file of them was found: pass the settings on the command line.", "TrainingArguments 由 HfArgumentParser 解析，但没有找到传入它们的启动脚本（--per_device_train_batch_size ...）或 JSON 文件：请在命令行中传入这些设置。"),
    HfBatchArg => ("The Trainer builds its DataLoader from {0}.per_device_train_batch_size.", "Trainer 用 {0}.per_device_train_batch_size 构建 DataLoader。"),
    HfBatchDead => ("{0}.per_device_train_batch_size is ignored because {1} builds its own DataLoader with batch_size={2}: the batch is set where that value comes from.", "{0}.per_device_train_batch_size 不起作用，因为 {1} 自己用 batch_size={2} 构建 DataLoader：批次大小在该值的来源处修改。"),
    HfArgIgnored => ("{0}: TrainingArguments.{1} has no effect because {2} overrides it; left as is.", "{0}：TrainingArguments.{1} 不起作用，因为 {2} 覆盖了它；保持不变。"),
    HfAccum => ("Gradient accumulation is done by the Trainer's loop ({0}.gradient_accumulation_steps), also with a custom DataLoader.", "梯度累积由 Trainer 的训练循环完成（{0}.gradient_accumulation_steps），自定义 DataLoader 时同样有效。"),
    HfPrecision => ("{0}=True makes the Trainer run the forward pass and loss under autocast ({1}); weights and optimizer state stay fp32.", "{0}=True 让 Trainer 在 autocast（{1}）下运行前向和损失；权重和优化器状态仍为 fp32。"),
    HfPrecisionOff => ("{0} is turned off: only one mixed-precision mode can be on.", "关闭 {0}：只能启用一种混合精度。"),
    HfTf32 => ("tf32=True lets fp32 matmuls use TF32 tensor cores (Ampere or newer).", "tf32=True 让 fp32 矩阵乘使用 TF32 张量核心（Ampere 及更新）。"),
    HfTruePrecision => ("{0} (weights in half precision) has no switch here: load the model with torch_dtype=torch.bfloat16 (or .to(dtype)); not edited.", "{0}（权重为半精度）在这里没有开关：加载模型时用 torch_dtype=torch.bfloat16（或 .to(dtype)）；未修改。"),
    HfCkpt => ("{0} supports Hugging Face gradient checkpointing: gradient_checkpointing=True recomputes each layer's activations in backward.", "{0} 支持 Hugging Face 梯度检查点：gradient_checkpointing=True 在反向传播时重算每层的激活。"),
    HfCkptOff => ("gradient_checkpointing=True fails for {0} (no supports_gradient_checkpointing): turned off, checkpointing is added in the model code.", "{0} 不支持 gradient_checkpointing=True（未声明 supports_gradient_checkpointing）：关闭它，改为在模型代码中加入检查点。"),
    HfCkptSelective => ("Hugging Face's gradient_checkpointing flag checkpoints every layer of {0}; it cannot select modules. Use --checkpointing full, or wrap the chosen blocks by hand.", "Hugging Face 的 gradient_checkpointing 对 {0} 的每一层生效，不能选择模块。请用 --checkpointing full，或手动包装所选的块。"),
    HfCkptTrap => ("gradient_checkpointing=True is not used: {0} ({1}) does not declare supports_gradient_checkpointing, so the Trainer's call to gradient_checkpointing_enable() raises ValueError (AttributeError under DDP). Checkpointing is added in the model code instead.", "不使用 gradient_checkpointing=True：{0}（{1}）没有声明 supports_gradient_checkpointing，Trainer 调用 gradient_checkpointing_enable() 会抛出 ValueError（DDP 下为 AttributeError）。改为在模型代码中加入检查点。"),
    HfAdam => ("The Trainer has no plain Adam choice: adamw_torch with weight_decay=0.0 (the TrainingArguments default) is the same update.", "Trainer 没有单独的 Adam 选项：weight_decay=0.0（TrainingArguments 默认值）的 adamw_torch 与 Adam 更新相同。"),
    HfOptim => ("optim=\"{0}\" selects the Trainer's optimizer.", "optim=\"{0}\" 选择 Trainer 的优化器。"),
    NeedsBnb => ("8-bit AdamW needs the bitsandbytes package (pip install bitsandbytes) and a CUDA GPU.", "8 位 AdamW 需要 bitsandbytes 包（pip install bitsandbytes）和 CUDA GPU。"),
    HfDl => ("The Trainer builds its DataLoader with {0}.", "Trainer 用 {0} 构建 DataLoader。"),
    PlPrecision => ("Lightning's precision=\"{0}\": the Trainer runs the forward pass under the matching autocast (and a GradScaler for 16-mixed).", "Lightning 的 precision=\"{0}\"：Trainer 在相应的 autocast 下运行前向（16-mixed 时还使用 GradScaler）。"),
    PlCliKey => ("LightningCLI passes {0} ({1}) to the data module: it overrides the default in the code.", "LightningCLI 把 {0}（{1}）传给数据模块：它覆盖代码中的默认值。"),
    PlCliNoConfig => ("LightningCLI is used but no YAML config with a trainer: section was found: pass --trainer.precision / --trainer.accumulate_grad_batches on the command line.", "使用了 LightningCLI，但没有找到含 trainer: 部分的 YAML 配置：请在命令行传入 --trainer.precision / --trainer.accumulate_grad_batches。"),
    PlTf32 => ("Lightning has no tf32 precision: call torch.set_float32_matmul_precision(\"high\") before fitting.", "Lightning 没有 tf32 精度：在训练前调用 torch.set_float32_matmul_precision(\"high\")。"),
    PlAccum => ("accumulate_grad_batches: Lightning sums gradients over that many batches (dividing the loss) before each optimizer step.", "accumulate_grad_batches：Lightning 在每次优化器步骤前累积这么多批次的梯度（并对损失做相应除法）。"),
    AccPrecision => ("Accelerator(mixed_precision=\"{0}\") runs the forward pass under autocast.", "Accelerator(mixed_precision=\"{0}\") 在 autocast 下运行前向。"),
    AccAccum => ("Accelerator(gradient_accumulation_steps=k) with `with accelerator.accumulate(model):` steps the optimizer every k batches.", "Accelerator(gradient_accumulation_steps=k) 配合 `with accelerator.accumulate(model):` 每 k 个批次执行一次优化器步骤。"),
    AccNoContext => ("The loop does not use `with accelerator.accumulate(model):`; without it gradient_accumulation_steps has no effect. Wrap the step in it.", "训练循环没有使用 `with accelerator.accumulate(model):`；没有它 gradient_accumulation_steps 不起作用。请用它包装训练步骤。"),
    DsKey => ("DeepSpeed reads {0} from {1}.", "DeepSpeed 从 {1} 读取 {0}。"),
    DsTrainBatch => ("{0} also sets train_batch_size, which must equal micro batch x accumulation x GPUs; set it to \"auto\" or update it.", "{0} 还设置了 train_batch_size，它必须等于微批次大小 x 累积步数 x GPU 数；改为 \"auto\" 或相应更新。"),
    DlBatch => ("The training DataLoader ({0}) takes its batch_size from here.", "训练 DataLoader（{0}）的 batch_size 来自这里。"),
    BatchSetting => ("No DataLoader builds the batches: the batch size is the batch_size setting read at {0}, set here.", "没有 DataLoader 构建批次：批次大小来自 {0} 处读取的 batch_size 设置，在此修改。"),
    NoDataLoaderOpts => ("No DataLoader(...) was found: the DataLoader settings were not changed.", "没有找到 DataLoader(...)：DataLoader 设置未修改。"),
    NoDataLoader => ("No training DataLoader(...) was found: batch size and DataLoader settings were not changed.", "没有找到训练用的 DataLoader(...)：批次大小和 DataLoader 设置未修改。"),
    NoOptimizer => ("No optimizer constructor (torch.optim.*) was found: the optimizer was not changed.", "没有找到优化器构造（torch.optim.*）：优化器未修改。"),
    DlOptOwn => ("{0} is set in the DataLoader that {1} builds (the TrainingArguments dataloader_* fields are ignored there).", "{0} 设在 {1} 构建的 DataLoader 中（那里会忽略 TrainingArguments 的 dataloader_* 字段）。"),
    DlOpt => ("{0} of the training DataLoader ({1}).", "训练 DataLoader（{1}）的 {0}。"),
    PersistentNoWorkers => ("{0}: persistent_workers=True needs num_workers > 0; not set.", "{0}：persistent_workers=True 需要 num_workers > 0；未设置。"),
    AccManual => ("{0}: the loop accumulates gradients itself, every `{1}` batches, and that value could not be followed to where it is set: make it {2}.", "{0}：循环自己做梯度累积（每 `{1}` 个批次），但无法追踪该值的来源：请改为 {2}。"),
    YamlNotPlaced => ("{0}: its trainer block holds lines that are not `key: value` settings, so no line was added there; add `{1}` by hand.", "{0}：其 trainer 块中有不是 `key: value` 形式的行，因此没有在其中添加；请手动添加 `{1}`。"),
    HalfWeights => ("{0}: the model is loaded with its weights in {1}. Mixed precision keeps fp32 weights and casts each op: with half-precision weights the optimizer updates them in half precision, and fp16's GradScaler stops with \"Attempting to unscale FP16 gradients\". Load it in fp32 (drop that argument); the memory figures of oomdoc plan assume fp32 weights.", "{0}：模型权重以 {1} 加载。混合精度保留 fp32 权重并逐个算子转换：权重为半精度时优化器以半精度更新，fp16 的 GradScaler 会报错 \"Attempting to unscale FP16 gradients\"。请以 fp32 加载（去掉该参数）；oomdoc plan 的显存数字按 fp32 权重计算。"),
    OptArgs => ("The optimizer {0} gets {1}.", "优化器 {0} 增加参数 {1}。"),
    OptOwnArgs => ("{2} builds {0} itself (TrainingArguments.optim is ignored): it gets {1}.", "{2} 自己构建 {0}（TrainingArguments.optim 被忽略）：增加参数 {1}。"),
    OptOwn => ("{2} builds {0} itself (TrainingArguments.optim is ignored): it becomes {1}.", "{2} 自己构建 {0}（TrainingArguments.optim 被忽略）：改为 {1}。"),
    OptSwap => ("The optimizer {0} becomes {1}.", "优化器 {0} 改为 {1}。"),
    OptRetuneFamily => ("{0}: the optimizer family changed; its learning rate may need re-tuning.", "{0}：优化器类型改变；学习率可能需要重新调整。"),
    OptRetune => ("{0}: the optimizer family changed (arguments removed: {1}); its learning rate may need re-tuning.", "{0}：优化器类型改变（删除的参数：{1}）；学习率可能需要重新调整。"),
    LoopShape => ("{0}: this loop's shape is not one oomdoc edits (backward() and optimizer.step() directly in a for loop); change it by hand.", "{0}：该循环的结构不在 oomdoc 可自动修改的范围内（for 循环中直接调用 backward() 和 optimizer.step()）；请手动修改。"),
    LoopTruePrecision => ("{0}: convert the model with model.to(torch.bfloat16) after building it; not edited (pure half precision changes the optimizer's numerics).", "{0}：构建模型后用 model.to(torch.bfloat16) 转换；未修改（纯半精度会改变优化器的数值行为）。"),
    LoopTf32 => ("TF32 tensor-core matmuls for fp32 training (Ampere or newer).", "fp32 训练使用 TF32 张量核心矩阵乘（Ampere 及更新）。"),
    LoopFp32Autocast => ("{0}: the loop already uses autocast; remove it by hand for fp32.", "{0}：循环已使用 autocast；fp32 训练请手动去掉。"),
    LoopAutocastDtype => ("The autocast dtype becomes {0}.", "autocast 的 dtype 改为 {0}。"),
    LoopAutocast => ("The forward pass and the loss ({1}) run under torch.autocast with {0}: matmuls and convolutions in half precision, weights and optimizer state in fp32; backward stays outside.", "前向和损失（{1}）在 dtype 为 {0} 的 torch.autocast 下运行：矩阵乘和卷积用半精度，权重和优化器状态仍为 fp32；backward 留在外面。"),
    LoopAccumExisting => ("The loop already accumulates gradients: the step interval is set here.", "循环已经做梯度累积：在此设置步长间隔。"),
    LoopAccumInner => ("The loop already accumulates gradients over an inner loop of micro-batches: its count is set here.", "循环已通过内层的微批次循环做梯度累积：在此设置其次数。"),
    LoopAutocastSwitch => ("{0}: autocast is enabled by `{1}`; mixed precision only takes effect when that is true.", "{0}：autocast 由 `{1}` 控制是否启用；只有其为真时混合精度才生效。"),
    LoopScalerSwitch => ("{0}: the GradScaler is enabled by `{1}`; fp16 needs it on (without it small gradients underflow to zero): make sure that is true.", "{0}：GradScaler 由 `{1}` 控制是否启用；fp16 必须启用它（否则小梯度会下溢为零）：请确认其为真。"),
    LoopScalerManual => ("{0}: the loop steps inside a condition; use scaler.step(optimizer) and scaler.update() there by hand.", "{0}：循环在条件语句中执行优化器步骤；请在那里手动改用 scaler.step(optimizer) 和 scaler.update()。"),
    LoopScaleBackward => ("With fp16 the loss is scaled before backward so that small gradients do not underflow.", "fp16 下反向传播前先缩放损失，避免小梯度下溢。"),
    LoopAccumDiv => ("The loss is divided by the accumulation steps so that the summed gradients equal one large-batch gradient.", "损失除以累积步数，使累加的梯度等于一个大批次的梯度。"),
    LoopAccumStep => ("{0} steps (and gradients are zeroed) once every grad_accum_steps micro-batches.", "每 grad_accum_steps 个微批次执行一次 {0} 的步骤（并清零梯度）。"),
    LoopZeroGradMoved => ("zero_grad() moves after the optimizer step, so that gradients accumulate across micro-batches.", "zero_grad() 移到优化器步骤之后，使梯度在微批次间累积。"),
    LoopAccumNote => ("After the change {0} holds the divided loss (multiply by grad_accum_steps when logging), step counters count micro-batches, and micro-batches left over at the end of an epoch carry into the next step.", "修改后 {0} 是除过的损失（记录日志时乘以 grad_accum_steps），步数计数器按微批次计数，每个 epoch 末尾剩余的微批次计入下一步。"),
    LoopScalerStep => ("scaler.step({0}) skips steps whose gradients hold inf/NaN, and scaler.update() adjusts the scale.", "scaler.step({0}) 跳过梯度含 inf/NaN 的步骤，scaler.update() 调整缩放系数。"),
    LoopScaler => ("fp16 needs a GradScaler (bf16 does not).", "fp16 需要 GradScaler（bf16 不需要）。"),
    LoopAccumConst => ("Accumulate gradients over {0} micro-batches.", "在 {0} 个微批次上累积梯度。"),
    LoopEnumerate => ("The loop counts micro-batches ({0}) to know when to step.", "循环对微批次计数（{0}），以确定何时执行优化器步骤。"),
    AttnEager => ("--attention eager: the model code is left as is (oomdoc does not rewrite fused attention back).", "--attention eager：模型代码保持不变（oomdoc 不会把融合注意力改回去）。"),
    CkptShared => ("{0}: {1} is also used as {2}; the change in {1} checkpoints those blocks too.", "{0}：{1} 也用于 {2}；对 {1} 的修改同样会对这些块做检查点。"),
    CkptNoMatch => ("{0}: no loop over that module list was found; not checkpointed.", "{0}：没有找到遍历该模块列表的循环；未加检查点。"),
    CkptNoLoops => ("No repeated blocks (for blk in self.blocks: x = blk(x) over an nn.ModuleList) were found to checkpoint.", "没有找到可加检查点的重复块（对 nn.ModuleList 的 for blk in self.blocks: x = blk(x)）。"),
    CkptHfEnable => ("{0} is a Hugging Face model: its own gradient_checkpointing_enable() checkpoints every layer (non-reentrant).", "{0} 是 Hugging Face 模型：用它自带的 gradient_checkpointing_enable() 对每一层做检查点（非重入）。"),
    CkptWrap => ("Activation checkpointing for {0}: while training, each {1} keeps only its input and recomputes its activations in backward (torch.utils.checkpoint, non-reentrant); in eval mode the blocks run as before.", "为 {0} 加梯度检查点：训练时每个 {1} 只保存输入，在反向传播时重算激活值（torch.utils.checkpoint，非重入）；评估模式下照常运行。"),
    AttnXformers => ("{2}: {0} uses xFormers' memory_efficient_attention when xformers is installed and falls back to {1}'s eager softmax otherwise. Installing xformers (pip install xformers, matching your torch version) is the change; the code is not edited.", "{2}：安装了 xformers 时 {0} 使用 xFormers 的 memory_efficient_attention，否则退回到 {1} 的普通 softmax 注意力。安装 xformers（pip install xformers，与 torch 版本匹配）就是所需的修改；代码未改动。"),
    AttnWeightsUsed => ("{0}: the attention weights ({1}) are used elsewhere (returned or stored); scaled_dot_product_attention does not produce them, so this attention was not rewritten.", "{0}：注意力权重（{1}）在别处被使用（返回或保存）；scaled_dot_product_attention 不产生它们，因此未改写。"),
    AttnRewrite => ("{0}: eager attention keeps the [batch, heads, L, L] probabilities for backward; F.scaled_dot_product_attention uses fused kernels that do not. Same scale ({1}), mask and dropout (scale= needs PyTorch 2.1 or newer).", "{0}：普通注意力为反向传播保存 [batch, heads, L, L] 概率矩阵；F.scaled_dot_product_attention 使用融合内核，不保存它。缩放（{1}）、掩码和 dropout 保持不变（scale= 需要 PyTorch 2.1 及以上）。"),
    AttnRewriteDefault => ("{0}: eager attention keeps the [batch, heads, L, L] probabilities for backward; F.scaled_dot_product_attention uses fused kernels that do not. Same scale ({1}: 1/sqrt(d), which is SDPA's default when d is the head size; passed explicitly so it stays the same either way), mask and dropout (scale= needs PyTorch 2.1 or newer).", "{0}：普通注意力为反向传播保存 [batch, heads, L, L] 概率矩阵；F.scaled_dot_product_attention 使用融合内核，不保存它。缩放相同（{1}：1/sqrt(d)，当 d 为每个头的维度时即 SDPA 的默认值；显式传入，确保不变），掩码和 dropout 保持不变（scale= 需要 PyTorch 2.1 及以上）。"),
    AttnRewriteUnscaled => ("{0}: eager attention keeps the [batch, heads, L, L] probabilities for backward; F.scaled_dot_product_attention uses fused kernels that do not. The scores are not scaled at this point (q is scaled earlier, or not at all), so scale=1.0 keeps the result the same; mask and dropout as before (scale= needs PyTorch 2.1 or newer).", "{0}：普通注意力为反向传播保存 [batch, heads, L, L] 概率矩阵；F.scaled_dot_product_attention 使用融合内核，不保存它。此处得分未再缩放（q 已提前缩放或无缩放），因此 scale=1.0 结果不变；掩码和 dropout 照旧（scale= 需要 PyTorch 2.1 及以上）。"),
    AttnHf => ("attn_implementation=\"sdpa\" makes the Hugging Face model use fused attention.", "attn_implementation=\"sdpa\" 让 Hugging Face 模型使用融合注意力。"),
    AttnNone => ("No eager softmax attention (softmax(q @ k.transpose(-2, -1)) @ v) was found in the project's code; nothing to rewrite.", "项目代码中没有找到普通 softmax 注意力（softmax(q @ k.transpose(-2, -1)) @ v）；无需改写。"),
} }

fn knob_label(k: Knob) -> String {
    format!("[{}]", k.name())
}

/// The patch as a document: hunks after their explanations, then the notes.
pub fn document(patch: &Patch, applied: Option<&Applied>, lang: Lang) -> Document {
    let mut d = Document::new();
    d.heading(1, fill(M::Title.text(lang), &[&patch.root]));
    let fw: Vec<&str> = patch.frameworks.iter().map(|f| f.name()).collect();
    let mut kv = vec![(M::Setup.text(lang).to_string(), fw.join(", "))];
    let req = requested(patch);
    if !req.is_empty() {
        kv.push((M::Requested.text(lang).to_string(), req));
    }
    kv.push((
        M::Changes.text(lang).to_string(),
        patch.files.len().to_string(),
    ));
    d.kv(kv);
    if patch.files.is_empty() {
        d.para(M::NoChanges.text(lang));
    }
    for f in &patch.files {
        d.heading(2, f.path.clone());
        for h in &f.hunks {
            let items: Vec<String> = h
                .changes
                .iter()
                .map(|c| format!("{} {}", knob_label(c.knob), c.why.text(lang)))
                .collect();
            if items.is_empty() {
                d.para(M::PartOfAbove.text(lang));
            } else {
                d.bullets(items);
            }
            d.code("diff", h.text.trim_end_matches('\n'));
        }
    }
    if !patch.notes.is_empty() {
        d.heading(2, M::NotesTitle.text(lang));
        d.bullets(
            patch
                .notes
                .iter()
                .map(|n| format!("{} {}", knob_label(n.knob), n.msg.text(lang)))
                .collect(),
        );
    }
    match applied {
        Some(a) if !a.written.is_empty() => {
            d.heading(2, M::WroteTitle.text(lang));
            d.bullets(
                a.written
                    .iter()
                    .map(|w| fill(M::Wrote.text(lang), &[&w.path, &w.backup]))
                    .collect(),
            );
        }
        None if !patch.files.is_empty() => {
            d.para(M::ApplyHint.text(lang));
        }
        _ => {}
    }
    d
}

fn requested(p: &Patch) -> String {
    let t = &p.target;
    let mut v = Vec::new();
    if let Some(x) = t.precision {
        v.push(format!("precision {}", x.name()));
    }
    if let Some(x) = t.batch {
        v.push(format!("batch {x}"));
    }
    if let Some(x) = t.grad_accum {
        v.push(format!("grad-accum {x}"));
    }
    if let Some(x) = t.checkpointing {
        let s = match x {
            crate::knobs::Checkpointing::None => "none".to_string(),
            crate::knobs::Checkpointing::Full => "full".to_string(),
            crate::knobs::Checkpointing::Selective => {
                format!("selective ({})", t.checkpoint_modules.join(", "))
            }
        };
        v.push(format!("checkpointing {s}"));
    }
    if let Some(x) = t.attention {
        v.push(format!(
            "attention {}",
            if x == crate::knobs::Attention::Sdpa {
                "sdpa"
            } else {
                "eager"
            }
        ));
    }
    if let Some(x) = t.optimizer {
        v.push(format!("optimizer {}", x.name()));
    }
    if let Some(x) = t.dataloader.num_workers {
        v.push(format!("num-workers {x}"));
    }
    if let Some(x) = t.dataloader.pin_memory {
        v.push(format!("pin-memory {x}"));
    }
    if let Some(x) = t.dataloader.persistent_workers {
        v.push(format!("persistent-workers {x}"));
    }
    if let Some(x) = &t.alloc_conf {
        v.push(format!("PYTORCH_CUDA_ALLOC_CONF={x}"));
    }
    if let Some(g) = &t.gpu {
        v.push(format!("gpu {g}"));
    }
    v.join(", ")
}
