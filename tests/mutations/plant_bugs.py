#!/usr/bin/env python3
"""Plants known bugs one at a time and checks that a test catches each (docs/testing.md).

For every mutation below: replace one exact piece of code (it must occur exactly once), rebuild
the targets the named test needs, run that test, and put the code back (always, also on errors
or Ctrl-C). A mutation is "caught" when the test fails. Prints a table; exits 1 if any mutation
survived (or could not be planted).

    tests/mutations/plant_bugs.py BUILD_DIR [NAME_SUBSTRING...]
    tests/mutations/plant_bugs.py --check

--check builds and runs nothing: it says which entries can no longer be planted (their code no
longer occurs exactly once, usually because it moved), so that the list does not rot between
full runs; ctest runs it (`mutations_plantable`).

BUILD_DIR is a configured build folder (Ninja) of this tree with the tests; the run takes one
incremental rebuild per mutation. The list documents the suite: each entry names the bug and the
test that is meant to see it.
"""
import pathlib
import signal
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def runs(binary, *targets):
    """What a mutation rebuilds (ninja targets, the test binary last) and the binary it runs."""
    return list(targets) + [binary], binary


# The test binaries most entries share, with what each needs rebuilt.
FSDP_RANKS = runs("test_distributed_runs", "wanhost", "automodel_fsdp")
MEGATRON_RANKS = runs("test_distributed_runs", "wanhost", "megatron_tpppcp")
MEGATRON_MODEL_RANKS = runs("test_distributed_runs", "wanhost", "wan21_dit", "megatron_tpppcp")
WAN21_DIT = runs("test_wan21_dit")
KERNELS = runs("test_kernels")
GENERATE = runs("test_generate", "wanhost")
OPTIM = runs("test_optim")
COMPUTE_WEIGHTS = runs("test_compute_weights")
TRAIN_UNITS = runs("test_train_units")

# name, file, old, new, ninja targets, test binary, gtest filter
MUTATIONS = [
    ("LR schedule one step ahead", "core/train/trainer.cpp",
     "learning_rate(stage, p_.stage_step)", "learning_rate(stage, p_.stage_step + 1)",
     *runs("test_train_learning", "wanhost"), "LrSchedule.MetricsFollowTheRecipe"),
    ("decay_1d=false decays the wrong parameters", "sdk/kit/src/optim.cpp",
     "return decay_1d || !one_d;", "return decay_1d || one_d;",
     *OPTIM, "AdamW.DecayRuleOfBothReferences"),
    ("AdamW without bias correction (per-tensor update)", "sdk/kit/src/optim.cpp",
     "p.addcdiv_(m, denom, -lr / bias1);", "p.addcdiv_(m, denom, -lr);",
     *OPTIM, "AdamW.PerTensorUpdateMatchesTorchAdamW"),
    ("cross-attention's k and v swapped", "plugins/wan21_dit/wan21_dit_model.cpp",
     "k = kv[0], v = kv[1];", "k = kv[1], v = kv[0];",
     *WAN21_DIT, "Wan21Dit.MatchesDiffusersFp32OutputsAndGradients"),
    ("the fused AdamW ignores the clip divisor", "sdk/kit/src/optim.cpp",
     "if (grad_divisor.defined()) divisor = grad_divisor.to(device, at::kFloat).reshape({});", "",
     *OPTIM, "AdamW.GradientDivisorIsAppliedInsideTheUpdate"),
    ("the optimizer step forgets the pending clip", "sdk/kit/src/parallelism_base.cpp",
     "adamw.step(lr, pending_clips().take(owner), skip);", "adamw.step(lr, at::Tensor(), skip);",
     *OPTIM, "ParallelismBase.ClipsInsideTheNextOptimizerStep"),
    ("a clip stays pending after its step", "sdk/kit/src/parallelism_base.cpp",
     "adamw.step(lr, pending_clips().take(owner), skip);",
     "adamw.step(lr, pending_clips().get(owner), skip);",
     *OPTIM, "ParallelismBase.ClipsInsideTheNextOptimizerStep"),
    ("the fused AdamW updates a skipped step", "sdk/kit/src/optim.cpp",
     "if (skipped_now.defined()) found_inf = skipped_now.to(device);", "",
     *OPTIM, "AdamW.SkippedStepChangesNothing"),
    ("a skipped step counts for the bias correction", "sdk/kit/src/optim.cpp",
     "count.add_(1.0 - skipped_now.to(count.device()))", "count.add_(1.0)",
     *OPTIM, "AdamW.SkippedStepChangesNothing"),
    ("the device-side skip ignores a non-finite loss", "core/train/trainer.cpp",
     "at::logical_not(at::isfinite(totals[0]) & at::isfinite(grad_norm))",
     "at::logical_not(at::isfinite(grad_norm))",
     *runs("test_train_checkpoints", "wanhost"),
     "NonFinite.SkipCountsAndDoesNotStep"),
    ("a replayed step trains on the captured inputs' old values", "core/train/step_graphs.cpp",
     "if (t.defined()) t.copy_(v, /*non_blocking=*/!t.device().is_cpu());", "(void)v;",
     *TRAIN_UNITS, "StepGraphs.CapturesAKeysSecondStepAndReplaysLaterOnesWithTheirOwnValues"),
    ("a step graph captured on its key's first (cold) step", "core/train/step_graphs.cpp",
     "if (seen == 0 || graphs_.size() >= max_graphs_) {", "if (graphs_.size() >= max_graphs_) {",
     *TRAIN_UNITS, "StepGraphs.CapturesAKeysSecondStepAndReplaysLaterOnesWithTheirOwnValues"),
    ("the step graph key leaves out the model's host-side choice", "core/train/step_graphs.cpp",
     'key << " | " << *model_key;', 'key << " | ";',
     *TRAIN_UNITS, "StepGraphs.KeysFollowShapesTheModelsChoiceAndTheLearningRate"),
    ("the step graph key leaves out a baked learning rate", "core/train/step_graphs.cpp",
     'if (baked_lr) key << "lr " << std::bit_cast<std::uint64_t>(*baked_lr);',
     'if (baked_lr) key << "lr";',
     *TRAIN_UNITS, "StepGraphs.KeysFollowShapesTheModelsChoiceAndTheLearningRate"),
    ("the fused AdamW takes the host number, not the device LR", "sdk/kit/src/optim.cpp",
     "device_lr.defined() ? fused(device_lr.to(device, at::kFloat).reshape({})) : fused(lr);",
     "fused(lr);",
     *OPTIM, "AdamW.DeviceLearningRateGivesTheHostLearningRatesUpdate"),
    ("the per-tensor AdamW ignores the device LR", "sdk/kit/src/optim.cpp",
     "      if (device_lr.defined()) lr = device_lr.item<double>();\n", "",
     *OPTIM, "AdamW.DeviceLearningRateGivesTheHostLearningRatesUpdate"),
    ("the SDK's device-LR step drops the skip", "sdk/include/wanhost/parallelism.hpp",
     "optimizer_step_unless(lr.item<double>(), skip);",
     "optimizer_step_unless(lr.item<double>(), at::Tensor());",
     *OPTIM, "Parallelism.DefaultDeviceLearningRateStepReadsTheRateOnTheHost"),
    ("wan21_dit's graph key is not the kept text rows", "plugins/wan21_dit/wan21_dit_model.cpp",
     "return rope + \", text rows \" + std::to_string(kept);",
     "return rope + \", text rows \" + std::to_string(total);",
     *WAN21_DIT, "Wan21Dit.GraphKeyIsTheTextRowsTheCrossAttentionSees"),
    ("collated text buffers never recycled", "sdk/kit/src/collate.cpp",
     "    if (!data) {\n      capacity = (bytes + 63) / 64 * 64;",
     "    if (true) {\n      capacity = (bytes + 63) / 64 * 64;",
     *runs("test_batch"), "CollateDense.LargeTextReusesAFreedBufferAndStillPadsWithZeros"),
    ("a recycled text buffer handed to two live batches", "sdk/kit/src/collate.cpp",
     "    free_.erase(it);\n", "",
     *runs("test_batch"), "CollateDense.LargeTextReusesAFreedBufferAndStillPadsWithZeros"),
    ("wan21_dit's graph key ignores a RoPE cache eviction", "plugins/wan21_dit/wan21_dit_model.cpp",
     "      ++generation;\n", "",
     *WAN21_DIT, "Wan21Dit.GraphKeyChangesWhenTheRopeCacheIsCleared"),
    ("clip_grad_norm=0 zeroes every gradient", "sdk/kit/src/optim.cpp",
     "if (max_norm <= 0) return at::ones(", "if (max_norm < 0) return at::ones(",
     *OPTIM, "GradNorm.ClipDivisorIsTheInverseOfTheClipFactor"),
    ("sample keys built from the step", "core/train/trainer.cpp",
     "? stage_step * local + j : position;", "? stage_step * local + j : global_step;",
     *runs("test_train_learning", "wanhost"),
     "RandomKeys.SamplesAreKeyedByTheirStreamPosition"),
    ("run.kernels.adamw=loop ignored", "sdk/kit/src/kernel_options.cpp",
     'o.fused_adamw = adamw != "loop";', "o.fused_adamw = true;",
     *runs("test_train_learning", "wanhost"),
     "AdamWPaths.FusedAndPerTensorUpdatesAgree"),
    ("the input making time never measured", "core/train/step_inputs.cpp",
     "r->inputs.make_s = seconds_since(t0);", "",
     *runs("test_train_learning", "wanhost"), "Prefetch.OnAndOffTakeTheSameSteps"),
    ("collators key samples by their data index", "sdk/kit/src/collate.cpp",
     "s.key >= 0 ? s.key : s.index", "s.index",
     *runs("test_train_learning", "wanhost", "dense"),
     "RandomKeys.SamplesAreKeyedByTheirStreamPosition"),
    ("collated text padding left unwritten", "sdk/kit/src/collate.cpp",
     "sample.narrow(0, lengths[i], rows - lengths[i]).zero_();", "(void)sample;",
     *runs("test_batch"), "CollateDense.PadsTextToFixedRows"),
    ("micro batches one sample short", "sdk/kit/src/collate.cpp",
     "std::min(samples.size(), start + mb)", "std::min(samples.size(), start + mb - 1)",
     *runs("test_batch"), "Collate.InGroupsOfTheMicroBatch"),
    ("clip start not rounded", "core/prepare/frame_plan.cpp",
     "(c * (m - num_frames) + (n - 1) / 2) / (n - 1)", "(c * (m - num_frames)) / (n - 1)",
     *runs("test_data_plan"), "PlanClips.ResamplesToTargetRate"),
    ("a plugin one SDK minor newer accepted", "core/plugin/abi_reader.cpp",
     "else if (p.sdk_minor > h.sdk_minor)", "else if (p.sdk_minor > h.sdk_minor + 1)",
     *runs("test_core_loader"), "Loader.NewerSdkMinorRefusedNamingBothSides"),
    ("empty prompt keeps no key row when masked", "plugins/wan21_dit/wan21_dit_model.cpp",
     "for (auto& l : lengths) l = std::max<std::int64_t>(l, 1);", "",
     *WAN21_DIT, "Wan21Dit.EmptyPromptKeepsOneKeyRowWhenMasked"),
    ("FSDP gradients averaged instead of summed", "plugins/automodel_fsdp/automodel_fsdp_plugin.cpp",
     "ctx_.dp->reduce_scatter(mine, input.view(-1), ReduceOp::Sum);",
     "ctx_.dp->reduce_scatter(mine, input.view(-1), ReduceOp::Avg);",
     *FSDP_RANKS,
     "Distributed.FsdpOnOneTwoThreeRanksReproducesTheSingleProcessRun"),
    ("FSDP: a kept block's graph lists another block's weights (its own get no gradient)",
     "plugins/automodel_fsdp/automodel_fsdp_plugin.cpp",
     "graph = record_block(model, ctx_, i, h, *act, unit_params(i));",
     "graph = record_block(model, ctx_, i, h, *act, unit_params(i ^ 1));",
     *FSDP_RANKS,
     "Distributed.FsdpRecomputeChoicesReproduceRecomputingEveryBlock"),
    ("FSDP: a kept block's weights gathered into new tensors (its graph reads freed memory)",
     "plugins/automodel_fsdp/automodel_fsdp_plugin.cpp",
     "const bool refill = u.parked && u.flat.scalar_type() == u.buffer.scalar_type();",
     "const bool refill = false;",
     *FSDP_RANKS,
     "Distributed.FsdpRecomputeChoicesReproduceRecomputingEveryBlock"),
    ("FSDP: recompute every_k recomputes the other blocks",
     "plugins/automodel_fsdp/automodel_fsdp_plugin.cpp",
     "(mode == \"every_k\" && i % every == 0)", "(mode == \"every_k\" && i % every != 0)",
     *FSDP_RANKS,
     "Distributed.FsdpRecomputeChoicesReproduceRecomputingEveryBlock"),
    ("FSDP: recompute_every accepted (and ignored) without every_k",
     "plugins/automodel_fsdp/automodel_fsdp_plugin.cpp",
     "} else if (has_every) {", "} else if (false) {",
     *FSDP_RANKS,
     "Distributed.FsdpRecomputeOptionsThatDoNotFitAreRefused"),
    ("sharded gradient norm not summed over ranks", "sdk/kit/src/parallelism_base.cpp",
     "if (group && group->size() > 1) {", "if (group && group->size() > 99) {",
     *FSDP_RANKS,
     "Distributed.FsdpOnOneTwoThreeRanksReproducesTheSingleProcessRun"),
    ("seq_packer fills packs smallest first", "plugins/seq_packer/seq_packer.cpp",
     "if (tokens[a] != tokens[b]) return tokens[a] > tokens[b];",
     "if (tokens[a] != tokens[b]) return tokens[a] < tokens[b];",
     *runs("test_seq_packer"), "SeqPacker.FirstFitDecreasingByHand"),
    ("seq_packer drops a pack's last sample", "plugins/seq_packer/seq_packer.cpp",
     "for (std::size_t i : pack) members.push_back(std::move(samples[i]));",
     "for (std::size_t i : pack) members.push_back(std::move(samples[i]));\n"
     "    if (members.size() > 1) members.pop_back();",
     *runs("test_train_packing", "wanhost", "seq_packer"),
     "SeqPacker.TrainsLikeTheDenseCollator"),
    ("padding tokens seen by a sample's real tokens", "plugins/wan21_dit/wan21_dit_model.cpp",
     "make_attention_segments(cu_self, cu_self, ctx_.device);",
     "make_attention_segments(cu, cu, ctx_.device);",
     *WAN21_DIT, "Wan21Dit.PaddedPackGivesTheUnpaddedResult"),
    ("whole videos not cut to 4k+1 frames", "core/prepare/frame_plan.cpp",
     "const std::int64_t count = (cap - 1) / multiple * multiple + 1;",
     "const std::int64_t count = cap;",
     *runs("test_data_plan"), "PlanWholeVideo.LargestFourKPlusOneFromTheStart"),
    ("--max-frames left out of a folder's settings", "core/prepare/prepare.cpp",
     "s[\"max_frames\"] = o.max_frames;", "",
     *runs("test_data_prepare", "wanhost"),
     "Prepare.WholeVideoSettingsAreCompared"),
    ("megatron: q/k RMSNorm statistics not summed over tp", "plugins/wan21_dit/wan21_dit_model.cpp",
     "coll::sum_over_group(xf.square().sum(-1, /*keepdim=*/true), group)",
     "xf.square().sum(-1, /*keepdim=*/true) * group->size()",
     *MEGATRON_MODEL_RANKS,
     "Distributed.MegatronTensorParallelTwoRanks"),
    ("megatron: q/k norm weight gradient not summed over tp", "plugins/wan21_dit/wan21_dit_model.cpp",
     "(ctx_.gather_sequence ? weight : coll::copy_to_group(weight, group))",
     "(ctx_.gather_sequence ? weight : weight)",
     *MEGATRON_MODEL_RANKS,
     "Distributed.MegatronTensorParallelTwoRanks"),
    ("megatron: row-parallel bias added on every tp rank", "plugins/megatron_tpppcp/tensor_parallel.cpp",
     ": coll::reduce_from_group(local_product(x, {}), group_);",
     ": coll::reduce_from_group(local_product(x, bias_), group_);",
     *MEGATRON_RANKS,
     "Distributed.MegatronTensorParallelTwoRanks"),
    ("megatron: replicated parameters counted on every tp rank in the norm",
     "plugins/megatron_tpppcp/megatron_tpppcp_plugin.cpp",
     "const bool once_in_tp = q.split_dim >= 0 || me_.tp == 0;", "const bool once_in_tp = true;",
     *MEGATRON_RANKS,
     "Distributed.MegatronTensorParallelTwoRanks"),
    ("megatron: shared parameters' gradients not summed over pp",
     "plugins/megatron_tpppcp/megatron_tpppcp_plugin.cpp",
     "if (d_.pp > 1) all_reduce_grads(shared, ctx_.pp);", "",
     *MEGATRON_RANKS,
     "Distributed.MegatronPipelineTwoStages"),
    ("megatron: updated shards not gathered into the model",
     "plugins/megatron_tpppcp/megatron_tpppcp_plugin.cpp",
     "if (distributed_optimizer_) gather_shards();", "",
     *MEGATRON_RANKS,
     "Distributed.MegatronDataTimesTensorWithTheDistributedOptimizer"),
    ("megatron: resume reads only the first tp file", "sdk/kit/src/checkpoint_state.cpp",
     "for (int k = 0; k < tp_; ++k)", "for (int k = 0; k < 1; ++k)",
     *MEGATRON_RANKS,
     "Distributed.MegatronStopInOneLayoutResumeInAnother"),
    ("megatron: cp keys gathered but left in rank order", "plugins/megatron_tpppcp/context_parallel.cpp",
     "coll::all_gather_along(k, 1, group).index_select(1, order);",
     "coll::all_gather_along(k, 1, group);",
     *MEGATRON_RANKS,
     "Distributed.MegatronContextParallelOnPacksOfMixedSizes"),
    ("megatron: cp keys' gradient not summed over the group", "plugins/megatron_tpppcp/context_parallel.cpp",
     "coll::all_gather_along(k, 1, group).index_select(1, order);",
     "coll::gather_along(k, 1, group).index_select(1, order);",
     *MEGATRON_RANKS,
     "Distributed.MegatronContextParallelOnPacksOfMixedSizes"),
    ("megatron: every cp rank back-propagates the whole loss", "plugins/megatron_tpppcp/megatron_tpppcp_plugin.cpp",
     "const int split = d_.cp * (sp_ ? d_.tp : 1);", "const int split = sp_ ? d_.tp : 1;",
     *MEGATRON_RANKS,
     "Distributed.MegatronContextParallelOnPacksOfMixedSizes"),

    ("megatron: sequence-parallel replicated gradients not summed over tp",
     "plugins/megatron_tpppcp/megatron_tpppcp_plugin.cpp",
     "all_reduce_grads(replicated, ctx_.tp);", "",
     *MEGATRON_RANKS,
     "Distributed.MegatronTensorParallelTwoRanks"),
    ("megatron: every sp rank back-propagates the whole loss",
     "plugins/megatron_tpppcp/megatron_tpppcp_plugin.cpp",
     "const int split = d_.cp * (sp_ ? d_.tp : 1);", "const int split = d_.cp;",
     *MEGATRON_RANKS,
     "Distributed.MegatronTensorParallelTwoRanks"),
    ("megatron: q/k norm weight gradient summed over tp under sequence parallelism",
     "plugins/wan21_dit/wan21_dit_model.cpp",
     "(ctx_.gather_sequence ? weight : coll::copy_to_group(weight, group))",
     "coll::copy_to_group(weight, group)",
     *MEGATRON_MODEL_RANKS,
     "Distributed.MegatronTensorParallelTwoRanks"),

    ("a pack of one grid unpatchified in the wrong order", "plugins/wan21_dit/wan21_dit_model.cpp",
     ".permute({7, 0, 1, 4, 2, 5, 3, 6})", ".permute({7, 0, 1, 2, 4, 3, 5, 6})",
     *runs("test_train_packing", "wanhost", "wan21_dit"),
     "SeqPacker.TrainsLikeTheDenseCollator"),

    ("UniPC corrector ignores the second-order solve", "core/generate/samplers.cpp",
     "rho_t = b1 - rho_0;", "rho_t = 0.5;",
     *GENERATE, "Cases/GenerateParity.*"),
    ("guidance pushes toward the unconditional branch", "core/generate/generate.cpp",
     "v = uncond + o.guidance * (cond - uncond);", "v = cond + o.guidance * (uncond - cond);",
     *GENERATE, "Cases/GenerateParity.*"),
    ("UniPC timesteps not truncated to integers", "core/generate/samplers.cpp",
     "timesteps.push_back(std::trunc(s * t));", "timesteps.push_back(s * t);",
     *GENERATE, "Cases/GenerateParity.*"),
    ("a video's last frame dropped from the MP4", "core/generate/media_writer.cpp",
     "if (packet->duration <= 0) packet->duration = 1;", "",
     *GENERATE, "Generate.WritesImagesVideosLatentsAndTheirRecord"),
    ("packed attention runs split the keys by the query lengths", "sdk/kit/src/layers.cpp",
     "kv_sizes.push_back(r.count * r.lkv);", "kv_sizes.push_back(r.count * r.lq);",
     *WAN21_DIT, "DefaultAttention.RunsOfEqualSegmentsEqualTheLoop"),
    ("packed attention runs merge segments of other key lengths", "sdk/kit/src/layers.cpp",
     "runs.back().lq == lq && runs.back().lkv == lkv", "runs.back().lq == lq",
     *WAN21_DIT, "DefaultAttention.RunsOfEqualSegmentsEqualTheLoop"),
    ("packed grids grouped without keeping the samples' order", "sdk/kit/src/collate.cpp",
     "std::stable_sort(order.begin(), order.end(),", "std::sort(order.rbegin(), order.rend(),",
     *runs("test_batch"), "CollatePacked.GroupsEqualGrids"),
    ("collapsed padding: each row's bias ignores what earlier rows took",
     "plugins/wan21_dit/wan21_dit_model.cpp", "left -= std::exp(b);", "",
     *WAN21_DIT, "Wan21Dit.CollapsedTextPaddingIsExact"),
    ("collapsed padding: the key bias never reaches attention", "plugins/wan21_dit/wan21_dit_model.cpp",
     "if (!key_bias.defined()) return ctx_.attention(q, k, v, args);",
     "if (true) return ctx_.attention(q, k, v, args);",
     *WAN21_DIT, "Wan21Dit.CollapsedTextPaddingIsExact"),
    ("packed attention runs drop the key bias", "sdk/kit/src/layers.cpp",
     "br.defined() ? br.reshape({r.count, r.lkv}) : at::Tensor()", "at::Tensor()",
     *WAN21_DIT, "Wan21Dit.CollapsedTextPaddingIsExact"),
    ("FP8 weight gradient dequantised with the weight's scale", "sdk/kit/src/fp8.cpp",
     "g.scale, x_scale,", "g.scale, w_scale,",
     *KERNELS, "Fp8.ProductsUseTheRightOperandsOnTheCpu"),
    ("FP8 gradients quantised as E4M3", "sdk/kit/src/fp8_arithmetic.cpp",
     "return gradient ? at::kFloat8_e5m2 : at::kFloat8_e4m3fn;", "return at::kFloat8_e4m3fn;",
     *KERNELS, "Fp8.QuantizationUsesTheFormatsRange"),
    ("FP8 weight copies kept across optimizer steps", "sdk/kit/src/fp8.cpp",
     "      epoch_ == epoch)", "      true)",
     *KERNELS, "Fp8.WeightIsQuantisedOncePerStep"),
    ("FP8 never reaches megatron's tensor-parallel layers", "plugins/megatron_tpppcp/tensor_parallel.cpp",
     "if (fp8_linear_applies(x, weight_)) return", "if (false) return",
     *MEGATRON_RANKS, "Distributed.MegatronTensorParallelWithFp8"),
    ("FP8 applied to embedders and the head", "sdk/kit/src/layers.cpp",
     "role != LinearRole::Replicated);", "true);",
     *KERNELS, "Fp8.LayersByRoleAndRecipe"),
    ("FP8 bias gradient summed from the quantised dy", "sdk/kit/src/fp8_arithmetic.cpp",
     "r.column_sums = x.sum(0, false, at::kFloat);",
     "r.column_sums = (q.to(at::kFloat) * r.scale).sum(0);",
     *KERNELS, "Fp8.ProductsUseTheRightOperandsOnTheCpu"),
    ("synthetic: captions embedded into the shared position table", "plugins/synthetic/synthetic_source.cpp",
     "at::Tensor out = positions(rows).clone();", "at::Tensor out = positions(rows);",
     *runs("test_synthetic"), "Synthetic.TextDoesNotDependOnWhatCameBefore"),
    ("weight casts: a step's pass casts only once (stale copies)", "sdk/kit/src/compute_weights.cpp",
     "for (auto& [place, lists] : groups) at::_foreach_copy_(lists.first, lists.second);",
     "for (auto& [place, lists] : groups) if (!c.settled) at::_foreach_copy_(lists.first, lists.second);",
     *runs("test_train_learning", "wanhost"),
     "WeightCasts.OnePassAStepTrainsAsCastsAtEachUse"),
    ("weight casts: run.kernels.weight_casts=per_step ignored", "sdk/kit/src/parallelism_base.cpp",
     "kernel_options().weight_casts_per_step && ctx.compute_dtype != ctx.param_dtype;",
     "false && ctx.compute_dtype != ctx.param_dtype;",
     *runs("test_train_learning", "wanhost"),
     "WeightCasts.OnePassAStepTrainsAsCastsAtEachUse"),
    ("weight casts: a copy used after weights_changed()", "sdk/kit/src/compute_weights.cpp",
     "c.epoch != g_epoch.load()", "false",
     *COMPUTE_WEIGHTS, "ComputeWeights.ACopyIsNeverUsedOnceItsMasterMayHaveChanged"),
    ("weight casts: a copy used after its master changed in place", "sdk/kit/src/tensor_stamp.hpp",
     "version_ == t._version();", "true;",
     *COMPUTE_WEIGHTS, "ComputeWeights.ACopyIsNeverUsedOnceItsMasterMayHaveChanged"),
    ("weight casts: a copy used after its master got another storage", "sdk/kit/src/tensor_stamp.hpp",
     "data_ == t.data_ptr() &&", "",
     *COMPUTE_WEIGHTS, "ComputeWeights.ACopyIsNeverUsedOnceItsMasterMayHaveChanged"),
    ("weight casts: AdamW does not say the weights changed", "sdk/kit/src/optim.cpp",
     "  weights_changed();\n  // found_inf", "  // found_inf",
     *COMPUTE_WEIGHTS, "ComputeWeights.EveryAdamWStepSaysTheWeightsChanged"),
    ("weight casts: the operators cast although a copy is fresh", "sdk/kit/src/compute_weights.cpp",
     "return copy.defined() ? copy : w.to(dtype);", "return w.to(dtype);",
     *COMPUTE_WEIGHTS, "ComputeWeights.AFreshCopyHoldsTheCastAndIsReusedStepAfterStep"),
    ("weight casts: ATen paths cast although a copy is fresh", "sdk/kit/src/fused.cpp",
     "  return compute_weight_differentiable(t, x.scalar_type());",
     "  return !t.defined() || t.scalar_type() == x.scalar_type() ? t : t.to(x.scalar_type());",
     *COMPUTE_WEIGHTS, "ComputeWeights.OperatorsGiveTheSameValuesAndGradientsWithTheCopies"),
    ("fused: the norm's input handed on without its gradient path", "sdk/kit/src/fused.cpp",
     "  return {x, reference::layer_norm_modulate(x, scale, shift, eps, segments)};",
     "  return {x.detach(), reference::layer_norm_modulate(x, scale, shift, eps, segments)};",
     *KERNELS, "FusedReference.LayerNormModulateWithInputSumsBothGradients"),
    ("FP8: a recurring input quantised at every use", "sdk/kit/src/fp8.cpp",
     "  if (again) c.recurring = {stamp, q};", "",
     *KERNELS, "Fp8.ARecurringInputIsQuantisedTwiceNotEveryTime"),
    ("FP8: a kept input served after it changed", "sdk/kit/src/tensor_stamp.hpp",
     "version_ == t._version();", "true;",
     *KERNELS, "Fp8.InputsAreQuantisedAgainWhenTheyChange"),
    ("FP8 feed-forward: the GELU gradient's operands swapped", "sdk/kit/src/fp8_arithmetic.cpp",
     'return at::gelu_backward(x, p.aux, "tanh");', 'return at::gelu_backward(p.aux, x, "tanh");',
     *KERNELS, "Fp8.FusedFeedForwardGivesTheTwoLayersValuesAndGradients"),
    ("FP8 feed-forward: no GELU between the layers", "sdk/kit/src/fp8.cpp",
     "{Elementwise::gelu, {}}", "{}",
     *KERNELS, "Fp8.FusedFeedForwardGivesTheTwoLayersValuesAndGradients"),
    ("FP8 feed-forward: the layers' bias gradients swapped", "sdk/kit/src/fp8.cpp",
     "            up.db,\n            down.dw,\n            down.db,",
     "            down.db,\n            down.dw,\n            up.db,",
     *KERNELS, "Fp8.FusedFeedForwardGivesTheTwoLayersValuesAndGradients"),
    ("FP8 feed-forward: run.kernels.fp8_gelu=fused ignored", "sdk/kit/src/layers.cpp",
     "return kernel_options().fp8_fused_gelu && up.fp8_eligible_",
     "return false && up.fp8_eligible_",
     *KERNELS, "Fp8.FusedFeedForwardGivesTheTwoLayersValuesAndGradients"),
    ("FP8 layers of one input: the summed input gradient keeps only the last term", "sdk/kit/src/fp8_arithmetic.cpp",
     " +\n          so_far.to(at::kFloat))", ")",
     *KERNELS, "Fp8.LayersOfOneInputSumItsGradientInTheirProducts"),
    ("FP8 layers of one input: an unused output's zeros summed in", "sdk/kit/src/fp8.cpp",
     "    ctx->set_materialize_grads(false);", "",
     *KERNELS, "Fp8.LayersOfOneInputSumItsGradientInTheirProducts"),
    ("FP8 layers of one input: the layers' weight gradients swapped", "sdk/kit/src/fp8.cpp",
     "      dx = d.dx, dw[i] = d.dw, db[i] = d.db;",
     "      dx = d.dx, dw[n - 1 - i] = d.dw, db[i] = d.db;",
     *KERNELS, "Fp8.LayersOfOneInputSumItsGradientInTheirProducts"),
    ("FP8 layers of one input: run.kernels.fp8_input_gradients=summed ignored", "sdk/kit/src/layers.cpp",
     "    if (!kernel_options().fp8_summed_input_gradients) return false;",
     "    return false;",
     *KERNELS, "Fp8.LayersOfOneInputSumItsGradientInTheirProducts"),
    ("FP8 layers of one input: the run never says how many were summed", "core/train/trainer.cpp",
     "        say_how_fp8_input_gradients_were_summed(", "        if (false) say_how_fp8_input_gradients_were_summed(",
     *runs("test_train_learning", "wanhost"),
     "Fp8.SummedInputGradientsTrainAsSeparateOnesAndSaySo"),
    ("FP8 fast accumulation: run.fp8_fast_accumulation never reaches the kit", "core/train/trainer.cpp",
     "  set_fp8_fast_accumulation(cfg_.run.fp8_fast_accumulation);", "",
     *runs("test_train_learning", "wanhost"),
     "Fp8.FastAccumulationIsLoggedAndABadNameNamesItsPlace"),
    ("FP8 fast accumulation: a name parsed to another choice", "sdk/kit/src/fp8.cpp",
     '{Fp8FastAccumulation::all, "all"}', '{Fp8FastAccumulation::forward, "all"}',
     *KERNELS, "Fp8.FastAccumulationNames"),
    ("bench: --fp8-fast-accumulation never reaches the kit", "core/bench/bench.cpp",
     "    set_fp8_fast_accumulation(parse_fp8_fast_accumulation(o.fp8_fast_accumulation));\n", "",
     *runs("test_cli_bench", "wanhost"), "CliBench.Fp8ProductOptionsAreReported"),
    ("bench: --fp8-input-gradients never reaches the kit (the default, summed, taken)", "core/bench/bench.cpp",
     "o.weight_casts, o.fp8_gelu, o.fp8_input_gradients));", 'o.weight_casts, o.fp8_gelu, "summed"));',
     *runs("test_cli_bench", "wanhost"), "CliBench.Fp8ProductOptionsAreReported"),
    ("FP8 cast grid: the one-wave rule at every size (GELU' at 12480 x 8960 was 10 % slower)", "kernels/fp8_cast_grid.hpp",
     "  if (blocks(many) > 2 * wave) return many;\n", "",
     *runs("test_fp8_cast_grid"), "Fp8CastGrid.ManyWavesKeepAWavesWorthOfTilesAtMostEight"),
    ("FP8 cast grid: at most 8 tiles a block in the one-wave rule", "kernels/fp8_cast_grid.hpp",
     "constexpr std::int64_t kMostOfMany = 8, kMost = 16;", "constexpr std::int64_t kMostOfMany = 8, kMost = 8;",
     *runs("test_fp8_cast_grid"), "Fp8CastGrid.FewWavesFillOneWave"),
    ("graphs: a new key's step out of memory beside the graphs not run again", "core/train/step_graphs.cpp",
     "      if (!out_of_device_memory(ex)) throw;", "      throw;",
     *TRAIN_UNITS, "StepGraphs.ANewKeyOutOfMemoryBesideTheGraphsDropsThemAndRunsAgainEagerly"),
    ("graphs: an out-of-memory error nested in a plugin's error not seen", "core/train/step_graphs.cpp",
     "    std::rethrow_if_nested(e);", "",
     *TRAIN_UNITS, "StepGraphs.ANewKeyOutOfMemoryBesideTheGraphsDropsThemAndRunsAgainEagerly"),
    ("graphs: every error of a new key's step taken for out of memory", "core/train/step_graphs.cpp",
     "  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) return true;", "  return true;",
     *TRAIN_UNITS, "StepGraphs.ANewKeyOutOfMemoryBesideTheGraphsDropsThemAndRunsAgainEagerly"),
    ("wan21_dit: collapsed_rows_from = text_rows ignored", "plugins/wan21_dit/wan21_dit_io.cpp",
     'o.collapse_from_text_rows = rows_from == "text_rows";', "o.collapse_from_text_rows = false;",
     *WAN21_DIT, "Wan21Dit.GraphKeyIsTheTextRowsTheCrossAttentionSees"),
    ("FP8 delayed: a step's max|x| not recorded", "sdk/kit/src/fp8_arithmetic.cpp",
     "  if (site) fp8_history::record_amax(*site, x);", "",
     *KERNELS, "Fp8Delayed.*"),
    ("FP8 delayed: the history never used", "sdk/kit/src/fp8_history.cpp",
     "    use.from_history = d.host_steps > *site.primed_at;", "    use.from_history = false;",
     *KERNELS, "Fp8Delayed.*"),
    ("FP8 delayed: the history's length ignored", "sdk/kit/src/fp8_history.cpp",
     "static_cast<std::int64_t>(g_history.load()) + 2;", "static_cast<std::int64_t>(16) + 2;",
     *KERNELS, "Fp8Delayed.*"),
    ("FP8 delayed: fp8_forget_history forgets nothing", "sdk/kit/src/fp8_history.cpp",
     "    for (Site& site : layer.of) site.primed_at.reset();",
     "    for (Site& site : layer.of) (void)site;",
     *KERNELS, "Fp8Delayed.*"),
    ("FP8 delayed: an infinite input saturated away", "sdk/kit/src/fp8_arithmetic.cpp",
     "\n                 .masked_fill(x.isinf(), std::numeric_limits<double>::quiet_NaN());", ";",
     *KERNELS, "Fp8Delayed.*"),
    ("FP8 delayed: the trainer never begins a step", "core/train/trainer.cpp",
     "  fp8_step_begins(c_.ctx.device);\n", "",
     *runs("test_train_learning", "wanhost"),
     "Fp8.DelayedScalingTrainsCloseToFullPrecisionAndSaysSo"),
    ("FP8 delayed: a resumed run without its checkpoint's histories", "core/train/trainer.cpp",
     '  load_fp8_histories((fs::path(dir) / "state").string());', "",
     *runs("test_train_resume", "wanhost"), "ExactResume.DelayedFp8*"),
    ("FP8 delayed: a stage resumed at its start keeps the last stage's histories", "sdk/kit/src/fp8_history.cpp",
     "  d.restored.clear();", "",
     *runs("test_train_resume", "wanhost"), "ExactResume.DelayedFp8*"),
    ("FP8 delayed: the step count not restored", "sdk/kit/src/fp8_history.cpp",
     "  d.steps[device.str()] =\n", "  d.steps[device.str() + \"x\"] =\n",
     *runs("test_train_resume", "wanhost"), "ExactResume.DelayedFp8*"),
    ("FP8 delayed: the bench never begins a step", "core/bench/bench.cpp",
     "    fp8_step_begins(device);  // --fp8 delayed: the amax histories' step\n", "",
     *runs("test_cli_bench", "wanhost"), "CliBench.DelayedFp8IsReported"),
    ("AdamW: wanhost's GPU kernel tried on CPU groups", "sdk/kit/src/optim.cpp",
     "    if (device.is_cuda() && fused_usable() && kernel_options().wanhost_adamw &&",
     "    if (fused_usable() && kernel_options().wanhost_adamw &&",
     *runs("test_train_learning", "wanhost"), "AdamWPaths.FusedAndPerTensorUpdatesAgree"),
    ("weight casts: used copies dropped", "sdk/kit/src/compute_weights.cpp",
     "    if (k.used) {", "    if (!k.used) {",
     *COMPUTE_WEIGHTS, "ComputeWeights.CopiesNobodyUsedInTheFirstStepAreDropped"),
]


def unplantable():
    """The entries whose code does not occur exactly once in their file, with the count."""
    out = []
    for name, rel, old, *_ in MUTATIONS:
        path = ROOT / rel
        count = path.read_text().count(old) if path.exists() else 0
        if count != 1:
            out.append((name, rel, count))
    return out


def main():
    # A SIGTERM (timeout, kill) unwinds like Ctrl-C, so the planted code is always put back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    if sys.argv[1] == "--check":
        bad = unplantable()
        for name, rel, count in bad:
            print(f"NOT PLANTABLE {name}: its code occurs {count} times in {rel}")
        print(f"{len(MUTATIONS) - len(bad)} of {len(MUTATIONS)} mutations can be planted")
        return 1 if bad else 0
    build = pathlib.Path(sys.argv[1]).resolve()
    wanted = sys.argv[2:]
    rows, survived, built = [], 0, set()
    for name, rel, old, new, targets, binary, test in MUTATIONS:
        if wanted and not any(w in name for w in wanted):
            continue
        built.update(targets)
        path = ROOT / rel
        text = path.read_text()
        if text.count(old) != 1:
            rows.append((name, f"NOT PLANTED ({rel}: the code occurs {text.count(old)} times)"))
            survived += 1
            continue
        try:
            path.write_text(text.replace(old, new))
            b = subprocess.run(["ninja", "-C", str(build)] + targets, capture_output=True, text=True)
            if b.returncode != 0:
                rows.append((name, "NOT BUILT: " + b.stdout[-300:]))
                survived += 1
                continue
            t = subprocess.run([str(build / "bin" / binary), "--gtest_filter=" + test],
                               capture_output=True, text=True)
            caught = t.returncode != 0
            survived += not caught
            rows.append((name, ("caught by " if caught else "SURVIVED ") + test))
            print(f"{name:48s} {rows[-1][1]}", flush=True)
        finally:
            path.write_text(text)
    if built:  # back to the real code (only what was built with a planted bug)
        subprocess.run(["ninja", "-C", str(build)] + sorted(built), capture_output=True)
    print("\nsummary:")
    for name, result in rows:
        print(f"{name:48s} {result}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
