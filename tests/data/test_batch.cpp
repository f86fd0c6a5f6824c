// Batch helpers and the built-in dense / packed collators.
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Flags.h>
#include <gtest/gtest.h>

#include "wanhost/batch.hpp"
#include "wanhost/data.hpp"
#include "wanhost/kit/collate.hpp"

using wanhost::Batch;
using wanhost::collate_dense;
using wanhost::collate_packed;
using wanhost::CollateOptions;
using wanhost::PackSegment;
using wanhost::Sample;

// LibTorch's debugging switch: new CPU tensors are filled with junk instead of left as they are.
C10_DECLARE_bool(caffe2_cpu_allocator_do_junk_fill);

namespace {

constexpr std::int64_t kTextDim = 3;

// A sample whose values identify it: latent = index*1000 + position, text rows = index + row.
Sample make_sample(std::int64_t index, std::vector<std::int64_t> shape, std::int64_t text_rows) {
  Sample s;
  const std::int64_t n = shape[0] * shape[1] * shape[2] * shape[3];
  s.latent = (at::arange(n, at::kFloat) + 1000.0 * static_cast<double>(index)).reshape(shape);
  s.text = at::arange(text_rows * kTextDim, at::kFloat).reshape({text_rows, kTextDim}) +
           static_cast<double>(index);
  s.caption = "caption " + std::to_string(index);
  s.index = index;
  return s;
}

std::vector<Sample> three_equal_samples() {
  return {make_sample(7, {2, 1, 2, 3}, 2), make_sample(3, {2, 1, 2, 3}, 4),
          make_sample(11, {2, 1, 2, 3}, 1)};
}

std::vector<Sample> three_mixed_samples() {
  return {make_sample(4, {2, 1, 2, 2}, 2), make_sample(9, {2, 3, 2, 1}, 3),
          make_sample(1, {2, 2, 1, 1}, 1)};
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "<no std::invalid_argument thrown>";
}

}  // namespace

TEST(CollateDense, StacksLatentsAndPadsText) {
  const std::vector<Sample> samples = three_equal_samples();
  Batch b = collate_dense(samples, CollateOptions{});
  ASSERT_EQ(b.latents.sizes(), (std::vector<std::int64_t>{3, 2, 1, 2, 3}));
  ASSERT_EQ(b.text.sizes(), (std::vector<std::int64_t>{3, 4, kTextDim}));
  EXPECT_EQ(b.text_lengths.scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(b.text_lengths, at::tensor({2, 4, 1}, at::kLong)));
  for (std::int64_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(at::equal(b.latents[i], samples[i].latent));
    const std::int64_t l = samples[i].text.size(0);
    EXPECT_TRUE(at::equal(b.text[i].narrow(0, 0, l), samples[i].text));
    EXPECT_EQ(b.text[i].narrow(0, l, 4 - l).abs().sum().item<float>(), 0.0f);
  }
  EXPECT_FALSE(b.packed());
  EXPECT_EQ(b.sample_keys, (std::vector<std::int64_t>{7, 3, 11}));
  EXPECT_EQ(b.captions, (std::vector<std::string>{"caption 7", "caption 3", "caption 11"}));
  EXPECT_EQ(b.batch_size(), 3);
}

// The padding is written as zeros, not left as whatever the memory held: LibTorch's CPU
// allocator fills new tensors with junk for the duration of the test.
TEST(CollateDense, PadsTextToFixedRows) {
  const std::vector<Sample> samples = three_equal_samples();
  const bool junk = FLAGS_caffe2_cpu_allocator_do_junk_fill;
  FLAGS_caffe2_cpu_allocator_do_junk_fill = true;
  Batch b = collate_dense(samples, CollateOptions{6, 1, {}});
  FLAGS_caffe2_cpu_allocator_do_junk_fill = junk;
  ASSERT_EQ(b.text.size(1), 6);
  EXPECT_TRUE(at::equal(b.text_lengths, at::tensor({2, 4, 1}, at::kLong)));
  for (std::int64_t i = 0; i < 3; ++i) {
    const std::int64_t l = samples[i].text.size(0);
    EXPECT_TRUE(at::equal(b.text[i].narrow(0, 0, l), samples[i].text));
    EXPECT_EQ(b.text[i].narrow(0, l, 6 - l).abs().sum().item<float>(), 0.0f) << "sample " << i;
  }
}

// A batch's text of 16 MB or more comes from host buffers the collator recycles (fresh pages cost
// more than the copy): a buffer freed by one batch serves the next, whose padding is zeros again,
// not the previous captions, and which keeps its buffer while it lives.
TEST(CollateDense, LargeTextReusesAFreedBufferAndStillPadsWithZeros) {
  const std::int64_t b = 8, rows = 512, dim = 1024;  // 16 MiB of float32
  auto samples_of = [&](std::int64_t length, float value) {
    std::vector<Sample> out;
    for (std::int64_t i = 0; i < b; ++i) {
      Sample s = make_sample(i, {2, 1, 2, 3}, 1);
      s.text = at::full({length, dim}, value);
      out.push_back(std::move(s));
    }
    return out;
  };
  const CollateOptions options{rows, b, {}};
  const void* first = nullptr;
  {
    const Batch long_captions = collate_dense(samples_of(rows - 2, 7.0f), options);
    first = long_captions.text.data_ptr();
    EXPECT_EQ(long_captions.text.sum().item<double>(), 7.0 * b * (rows - 2) * dim);
  }
  const Batch short_captions = collate_dense(samples_of(3, 2.0f), options);
  EXPECT_EQ(short_captions.text.data_ptr(), first);  // the freed buffer, reused
  EXPECT_EQ(short_captions.text.narrow(1, 0, 3).min().item<float>(), 2.0f);
  EXPECT_EQ(short_captions.text.narrow(1, 3, rows - 3).abs().max().item<float>(), 0.0f);
  // While a batch lives, its buffer is its own.
  const Batch another = collate_dense(samples_of(3, 5.0f), options);
  EXPECT_NE(another.text.data_ptr(), short_captions.text.data_ptr());
  EXPECT_EQ(short_captions.text.narrow(1, 0, 3).max().item<float>(), 2.0f);
}

TEST(CollateDense, TextLongerThanRowsNamesTheSample) {
  const std::string msg = error_of([] {
    collate_dense(three_equal_samples(), CollateOptions{3, 1, {}});
  });
  EXPECT_NE(msg.find("sample 1 (index 3)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("text_rows 3"), std::string::npos) << msg;
}

TEST(CollateDense, ShapeMismatchNamesTheSample) {
  std::vector<Sample> samples = three_equal_samples();
  samples[2] = make_sample(42, {2, 1, 3, 3}, 1);
  const std::string msg = error_of([&] { collate_dense(samples, CollateOptions{}); });
  EXPECT_NE(msg.find("sample 2 (index 42)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[2, 1, 3, 3]"), std::string::npos) << msg;
}

TEST(CollateDense, RejectsEmptyAndMalformedInput) {
  EXPECT_THROW(collate_dense({}, CollateOptions{}), std::invalid_argument);
  std::vector<Sample> samples = three_equal_samples();
  samples[1].text = at::zeros({2, kTextDim + 1});
  const std::string msg = error_of([&] { collate_dense(samples, CollateOptions{}); });
  EXPECT_NE(msg.find("sample 1 (index 3)"), std::string::npos) << msg;
  samples = three_equal_samples();
  samples[0].latent = at::zeros({2, 3});
  EXPECT_THROW(collate_dense(samples, CollateOptions{}), std::invalid_argument);
}

TEST(CollatePacked, ConcatenatesFlattenedSamples) {
  const std::vector<Sample> samples = three_mixed_samples();
  Batch b = collate_packed(samples, CollateOptions{});
  ASSERT_TRUE(b.packed());
  ASSERT_EQ(b.latents.sizes(), (std::vector<std::int64_t>{2, 4 + 6 + 2}));
  const std::vector<std::int64_t> offsets{0, 4, 10};
  for (std::int64_t i = 0; i < 3; ++i) {
    const PackSegment& s = b.segments[i];
    EXPECT_EQ(s.offset, offsets[i]);
    EXPECT_EQ(s.frames, samples[i].latent.size(1));
    EXPECT_EQ(s.height, samples[i].latent.size(2));
    EXPECT_EQ(s.width, samples[i].latent.size(3));
    EXPECT_TRUE(at::equal(b.latents.narrow(1, s.offset, s.numel()),
                          samples[i].latent.reshape({2, s.numel()})));
  }
  EXPECT_EQ(b.sample_keys, (std::vector<std::int64_t>{4, 9, 1}));
  EXPECT_EQ(b.captions[1], "caption 9");
  EXPECT_EQ(b.text.sizes(), (std::vector<std::int64_t>{3, 3, kTextDim}));
  EXPECT_TRUE(at::equal(b.text_lengths, at::tensor({2, 3, 1}, at::kLong)));
}

// Samples of one grid are put together (grids in the order of their first sample, the samples of
// a grid in the given order), text rows and identities following their samples.
TEST(CollatePacked, GroupsEqualGrids) {
  const std::vector<Sample> samples = {
      make_sample(0, {2, 1, 2, 2}, 1), make_sample(1, {2, 1, 1, 3}, 2),
      make_sample(2, {2, 1, 2, 2}, 3), make_sample(3, {2, 2, 1, 1}, 1),
      make_sample(4, {2, 1, 1, 3}, 2), make_sample(5, {2, 1, 2, 2}, 2)};
  Batch b = collate_packed(samples, CollateOptions{});
  const std::vector<std::int64_t> order{0, 2, 5, 1, 4, 3};
  EXPECT_EQ(b.sample_keys, order);
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const Sample& s = samples[static_cast<std::size_t>(order[i])];
    const PackSegment& seg = b.segments[i];
    EXPECT_EQ(seg.offset, offset);
    EXPECT_TRUE(at::equal(b.latents.narrow(1, seg.offset, seg.numel()),
                          s.latent.reshape({2, seg.numel()})));
    EXPECT_EQ(b.captions[i], s.caption);
    EXPECT_TRUE(
        at::equal(b.text[static_cast<std::int64_t>(i)].narrow(0, 0, s.text.size(0)), s.text));
    offset += seg.numel();
  }
}

TEST(CollatePacked, ChannelMismatchNamesTheSample) {
  std::vector<Sample> samples = three_mixed_samples();
  samples[1] = make_sample(5, {3, 1, 1, 1}, 1);
  const std::string msg = error_of([&] { collate_packed(samples, CollateOptions{}); });
  EXPECT_NE(msg.find("sample 1 (index 5)"), std::string::npos) << msg;
  EXPECT_THROW(collate_packed({}, CollateOptions{}), std::invalid_argument);
}

// A step's samples in consecutive micro batches of options.micro_batch (the last may be smaller),
// in order, each sample once, its key (set by the host) in sample_keys.
TEST(Collate, InGroupsOfTheMicroBatch) {
  std::vector<Sample> samples;
  for (std::int64_t i = 0; i < 5; ++i) {
    samples.push_back(make_sample(10 + i, {2, 1, 2, 3}, 2));
    samples.back().key = 100 + i;
  }
  CollateOptions o;
  o.micro_batch = 2;
  const auto batches = wanhost::collate_in_groups(samples, o, collate_dense);
  ASSERT_EQ(batches.size(), 3u);
  const std::vector<std::vector<std::int64_t>> keys = {{100, 101}, {102, 103}, {104}};
  for (std::size_t b = 0; b < batches.size(); ++b) {
    EXPECT_EQ(batches[b].sample_keys, keys[b]) << "micro batch " << b;
    EXPECT_EQ(batches[b].latents.size(0), static_cast<std::int64_t>(keys[b].size()));
  }
  EXPECT_TRUE(batches[2].latents[0].equal(samples[4].latent));
  o.micro_batch = 0;
  EXPECT_NE(error_of([&] {
              wanhost::collate_in_groups(samples, o, collate_dense);
            }).find("micro_batch must be positive"),
            std::string::npos);
  // Without a key (-1) a collator falls back on the data index.
  samples[0].key = -1;
  o.micro_batch = 5;
  EXPECT_EQ(wanhost::collate_in_groups(samples, o, collate_dense)[0].sample_keys[0], 10);
}

TEST(BatchHelpers, PerSampleToLatentDense) {
  Batch b = collate_dense(three_equal_samples(), CollateOptions{});
  at::Tensor v = b.per_sample_to_latent(at::tensor({1.0f, 2.0f, 3.0f}));
  EXPECT_EQ(v.sizes(), (std::vector<std::int64_t>{3, 1, 1, 1, 1}));
  at::Tensor spread = v * at::ones_like(b.latents);
  EXPECT_EQ(spread[1].min().item<float>(), 2.0f);
  EXPECT_EQ(spread[1].max().item<float>(), 2.0f);
  EXPECT_THROW(b.per_sample_to_latent(at::ones({2})), std::invalid_argument);
}

TEST(BatchHelpers, PerSampleToLatentPacked) {
  Batch b = collate_packed(three_mixed_samples(), CollateOptions{});
  at::Tensor v = b.per_sample_to_latent(at::tensor({1.0f, 2.0f, 3.0f}));
  EXPECT_EQ(v.sizes(), (std::vector<std::int64_t>{1, 12}));
  at::Tensor expected = at::tensor({1.f, 1.f, 1.f, 1.f, 2.f, 2.f, 2.f, 2.f, 2.f, 2.f, 3.f, 3.f});
  EXPECT_TRUE(at::equal(v[0], expected));
}

TEST(BatchHelpers, PerSampleMeanDenseAndPacked) {
  const std::vector<Sample> samples = three_mixed_samples();
  Batch packed = collate_packed(samples, CollateOptions{});
  at::Tensor means = packed.per_sample_mean(packed.latents);
  ASSERT_EQ(means.sizes(), (std::vector<std::int64_t>{3}));
  EXPECT_EQ(means.scalar_type(), at::kFloat);
  for (std::int64_t i = 0; i < 3; ++i)
    EXPECT_FLOAT_EQ(means[i].item<float>(), samples[i].latent.mean().item<float>());

  Batch dense = collate_dense(three_equal_samples(), CollateOptions{});
  at::Tensor dense_means = dense.per_sample_mean(dense.latents.to(at::kDouble));
  EXPECT_EQ(dense_means.scalar_type(), at::kFloat);
  for (std::int64_t i = 0; i < 3; ++i)
    EXPECT_FLOAT_EQ(dense_means[i].item<float>(), dense.latents[i].mean().item<float>());
}

// A packer may leave padding columns between or after samples: they belong to no sample.
TEST(BatchHelpers, PackedPaddingIsMasked) {
  Batch b = collate_packed(three_mixed_samples(), CollateOptions{});
  Batch padded = b;
  padded.latents = at::full({2, 16}, 1e6f);
  const std::vector<std::int64_t> new_offsets{1, 6, 13};
  for (std::int64_t i = 0; i < 3; ++i) {
    padded.segments[i].offset = new_offsets[i];
    padded.latents.narrow(1, new_offsets[i], b.segments[i].numel())
        .copy_(b.latents.narrow(1, b.segments[i].offset, b.segments[i].numel()));
  }
  EXPECT_TRUE(at::allclose(padded.per_sample_mean(padded.latents), b.per_sample_mean(b.latents)));
  at::Tensor spread = padded.per_sample_to_latent(at::tensor({1.0f, 2.0f, 3.0f}));
  EXPECT_EQ(spread[0][0].item<float>(), 0.0f);
  EXPECT_EQ(spread[0][5].item<float>(), 0.0f);
  EXPECT_EQ(spread[0][6].item<float>(), 2.0f);
  EXPECT_EQ(spread[0][15].item<float>(), 0.0f);

  padded.segments[2].offset = 15;  // now runs past the end
  EXPECT_THROW(padded.per_sample_mean(padded.latents), std::invalid_argument);
}

TEST(BatchHelpers, PerSampleMeanIsDifferentiable) {
  Batch b = collate_packed(three_mixed_samples(), CollateOptions{});
  at::Tensor x = b.latents.clone().requires_grad_(true);
  b.per_sample_mean(x).sum().backward();
  // d mean_i / d x = 1 / (C * numel_i) on sample i's columns.
  EXPECT_FLOAT_EQ(x.grad()[0][0].item<float>(), 1.0f / 8);
  EXPECT_FLOAT_EQ(x.grad()[1][5].item<float>(), 1.0f / 12);
  EXPECT_FLOAT_EQ(x.grad()[1][11].item<float>(), 1.0f / 4);
}

TEST(BatchHelpers, GridAndTo) {
  Batch dense = collate_dense(three_equal_samples(), CollateOptions{});
  PackSegment g = dense.grid(2);
  EXPECT_EQ(g.frames, 1);
  EXPECT_EQ(g.height, 2);
  EXPECT_EQ(g.width, 3);
  EXPECT_THROW(dense.grid(3), std::out_of_range);
  EXPECT_THROW(dense.grid(-1), std::out_of_range);

  Batch packed = collate_packed(three_mixed_samples(), CollateOptions{});
  EXPECT_EQ(packed.grid(1).frames, 3);
  EXPECT_EQ(packed.grid(1).offset, 4);

  Batch moved = packed.to(at::Device(at::kCPU));
  EXPECT_TRUE(at::equal(moved.latents, packed.latents));
  EXPECT_TRUE(at::equal(moved.text_lengths, packed.text_lengths));
  EXPECT_EQ(moved.segments.size(), 3u);
  EXPECT_EQ(moved.sample_keys, packed.sample_keys);
}
