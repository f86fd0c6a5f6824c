// The OpenMPI communicator, every operation, on however many ranks mpirun started (CTest: 3).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "comm/mpi_communicator.hpp"

using namespace wanhost;

namespace {

CommunicatorPtr g_world;

at::Tensor arange_f(std::int64_t n, double start) {
  return at::arange(n, at::kFloat) + start;
}

TEST(MpiComm, AllReduceOps) {
  const int r = g_world->rank(), n = g_world->size();
  at::Tensor t = at::full({5}, r + 1.0, at::kFloat);
  g_world->all_reduce(t, ReduceOp::Sum);
  EXPECT_TRUE(at::allclose(t, at::full({5}, n * (n + 1) / 2.0)));
  at::Tensor m = at::full({3}, static_cast<double>(r), at::kDouble);
  g_world->all_reduce(m, ReduceOp::Max);
  EXPECT_EQ(m[0].item<double>(), n - 1);
  at::Tensor mi = at::full({3}, static_cast<std::int64_t>(r + 7), at::kLong);
  g_world->all_reduce(mi, ReduceOp::Min);
  EXPECT_EQ(mi[2].item<std::int64_t>(), 7);
  at::Tensor avg = at::full({4}, static_cast<double>(r), at::kFloat);
  g_world->all_reduce(avg, ReduceOp::Avg);
  EXPECT_NEAR(avg[0].item<float>(), (n - 1) / 2.0, 1e-6);
  // bf16 travels as fp32 and is written back in place.
  at::Tensor b = at::full({2}, 1.0, at::kBFloat16);
  g_world->all_reduce(b, ReduceOp::Sum);
  EXPECT_EQ(b.scalar_type(), at::kBFloat16);
  EXPECT_EQ(b[1].item<float>(), static_cast<float>(n));
}

TEST(MpiComm, GatherScatterAllToAllBroadcast) {
  const int r = g_world->rank(), n = g_world->size();
  at::Tensor in = arange_f(4, 10.0 * r);
  at::Tensor out = at::empty({4 * n}, at::kFloat);
  g_world->all_gather(out, in);
  for (int k = 0; k < n; ++k)
    EXPECT_TRUE(at::equal(out.slice(0, 4 * k, 4 * k + 4), arange_f(4, 10.0 * k)));

  at::Tensor big = at::arange(3 * n, at::kFloat) * (r + 1);
  at::Tensor mine = at::empty({3}, at::kFloat);
  g_world->reduce_scatter(mine, big, ReduceOp::Sum);
  const double ranks_sum = n * (n + 1) / 2.0;
  EXPECT_TRUE(at::allclose(mine, at::arange(3 * r, 3 * r + 3, at::kFloat) * ranks_sum));

  at::Tensor send = at::arange(2 * n, at::kLong) + 100 * r;  // slice j -> rank j
  at::Tensor recv = at::empty({2 * n}, at::kLong);
  g_world->all_to_all(recv, send);
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(recv[2 * i].item<std::int64_t>(), 100 * i + 2 * r);
    EXPECT_EQ(recv[2 * i + 1].item<std::int64_t>(), 100 * i + 2 * r + 1);
  }

  at::Tensor bc = r == n - 1 ? arange_f(6, 0.5) : at::zeros({6}, at::kFloat);
  g_world->broadcast(bc, n - 1);
  EXPECT_TRUE(at::equal(bc, arange_f(6, 0.5)));
}

TEST(MpiComm, AsyncAndPointToPoint) {
  const int r = g_world->rank(), n = g_world->size();
  at::Tensor a = at::ones({1000}, at::kFloat), b = at::full({10}, 2.0, at::kFloat);
  WorkPtr wa = g_world->all_reduce(a, ReduceOp::Sum, /*async=*/true);
  WorkPtr wb = g_world->all_reduce(b, ReduceOp::Sum, /*async=*/true);
  wb->wait();
  wa->wait();
  wa->wait();  // waiting twice is harmless
  EXPECT_EQ(a[999].item<float>(), n);
  EXPECT_EQ(b[0].item<float>(), 2.0f * n);

  // A ring: each rank sends its rank to the next one.
  at::Tensor out = at::full({2}, static_cast<double>(r), at::kDouble);
  at::Tensor in = at::empty({2}, at::kDouble);
  WorkPtr s = g_world->send(out, (r + 1) % n, 5);
  WorkPtr rv = g_world->recv(in, (r + n - 1) % n, 5);
  rv->wait();
  s->wait();
  EXPECT_EQ(in[0].item<double>(), (r + n - 1) % n);
  g_world->barrier();
}

TEST(MpiComm, SplitIntoGroups) {
  const int r = g_world->rank(), n = g_world->size();
  // Two groups: even and odd ranks.
  std::vector<int> mine;
  for (int k = r % 2; k < n; k += 2) mine.push_back(k);
  CommunicatorPtr sub = g_world->split(mine);
  EXPECT_EQ(sub->size(), static_cast<int>(mine.size()));
  EXPECT_EQ(sub->rank(), r / 2);
  EXPECT_EQ(sub->backend(), "mpi");
  at::Tensor t = at::full({1}, static_cast<double>(r), at::kDouble);
  sub->all_reduce(t, ReduceOp::Sum);
  double expect = 0;
  for (int k : mine) expect += k;
  EXPECT_EQ(t.item<double>(), expect);
  // A sub-group of the sub-group.
  CommunicatorPtr self = sub->split({sub->rank()});
  EXPECT_EQ(self->size(), 1);
  at::Tensor u = at::full({1}, 3.0, at::kFloat);
  self->all_reduce(u, ReduceOp::Sum);
  EXPECT_EQ(u.item<float>(), 3.0f);
}

TEST(MpiComm, BadArgumentsAreNamed) {
  const int n = g_world->size();
  at::Tensor out = at::empty({3}, at::kFloat), in = at::empty({2}, at::kFloat);
  try {
    g_world->all_gather(out, in);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("all_gather"), std::string::npos) << e.what();
  }
  EXPECT_THROW(g_world->split({n}), std::invalid_argument);
  EXPECT_THROW(g_world->split({1, 0}), std::invalid_argument);
  at::Tensor strided = at::zeros({4, 4}, at::kFloat).t();
  EXPECT_THROW(g_world->all_reduce(strided), std::invalid_argument);
  g_world->barrier();
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (!wanhost::core::mpi_init_if_launched()) {
    std::fprintf(stderr, "test_comm_mpi must be started by mpirun\n");
    return 1;
  }
  g_world = wanhost::core::make_mpi_world(60);
  // Only rank 0 prints results; every rank runs every test.
  if (g_world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  at::Tensor t = at::full({1}, rc, at::kInt);
  g_world->all_reduce(t, ReduceOp::Max);
  rc = t.item<int>();
  g_world.reset();
  wanhost::core::mpi_shutdown(0);
  return rc;
}
