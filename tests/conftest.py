"""Test configuration: strict promotion rules (as equinox's tests), keys from a fixture,
and property tests that CI replays deterministically."""

import itertools
import os

import jax
import numpy as np
import pytest
from hypothesis import settings

# CI (CI=true) draws the same examples on every run, so a failure there is reproducible;
# local runs keep drawing new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Implicit rank promotion hides shape bugs (a (n,) bias broadcast against (n, 1)); fail instead.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """Returns a function giving a fresh, never-reused PRNG key on every call."""
    counter = itertools.count(1)
    return lambda: jax.random.key(next(counter) * 7919)


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, for reference data."""
    return np.random.default_rng(20261122)


# Cases whose cost (mostly compiling, 5-12 s each on 2 cores) puts them in `make test-slow`,
# so that `make test` stays under 8 minutes; the cheaper cases of the same tests stay in
# `make test`. Whole tests written slow carry @pytest.mark.slow instead.
SLOW_CASES = {
    "tests/analyze/test_sweeps.py::test_matrix_free_norms_are_exact_with_full_spaces[3-2]",
    "tests/analyze/test_segments.py::test_every_sweep_is_the_same_with_and_without_runs[kw2]",
    "tests/rnn/test_fast.py::test_gradients_equal_in_float64[lstm]",
    "tests/rnn/test_fast.py::test_an_ensemble_under_vmap_equals_each_model[lstm]",
    "tests/analyze/test_nonfinite.py::test_all_finite_gives_no_record_and_no_warning"
    "[output_norms_matrix_free]",
    "tests/analyze/test_repeat_public.py::test_sweeps_equal_default_layout_float64"
    "[output_norms_matrix_free-tanh]",
    "tests/analyze/test_repeat_public.py::test_nan_in_block_j_is_reported_at_block_j[0]",
    "tests/analyze/test_linen.py::test_deep_flax_equals_jgrad_mlp_with_converted_weights"
    "[tanh-tanh-4.0-24]",
    "tests/analyze/test_linen.py::test_deep_flax_equals_jgrad_mlp_with_converted_weights"
    "[sigmoid-sigmoid-1.0-60]",
    "tests/analyze/test_nonfinite.py::test_eager_call_warns_jitted_call_does_not"
    "[output_norms_matrix_free]",
    "tests/rnn/test_fast.py::test_gradients_equal_in_float64[gru]",
    "tests/analyze/test_input_checks.py::test_a_batch_to_a_one_example_function_shows_the_vmap"
    "[output_norms]",
    "tests/analyze/test_repeat_public.py::test_nan_in_block_j_is_reported_at_block_j[3]",
    "tests/analyze/test_products.py::test_mean_squared_singular_value_grows_as_chi1"
    "[1.5-0.05-256-depths0-64-0.15]",
    "tests/rnn/test_fast.py::test_gradients_equal_plain_autodiff[lstm-plain]",
    "tests/analyze/test_repeat_public.py::"
    "test_layer_jacobians_and_products_equal_default_layout_float64[tanh]",
    "tests/analyze/test_repeat_public.py::test_dropout_keys_follow_the_repeat_split",
    "tests/test_bad_input.py::test_integer_like_sizes_build_the_same_network[np.int64]",
    "tests/analyze/test_nonfinite.py::test_spectrum_stats_nan_in_nan_out_and_records",
    "tests/analyze/test_norm_steps.py::test_summarise_concatenates_the_groups_deepest_first",
    "tests/analyze/test_nonfinite.py::"
    "test_nan_input_gives_nan_and_forward_index_0_jitted_and_vmapped"
    "[output_norms_matrix_free]",
    "tests/analyze/test_repeat.py::test_kernels_with_dropout_key_match_apply",
    "tests/analyze/test_nonfinite.py::test_dead_relu_gives_minus_inf_and_no_record",
    "tests/analyze/test_sweeps.py::test_output_sweep_equals_per_layer_products_and_jacrev"
    "[True-kw2]",
    "tests/analyze/test_jacobians.py::test_mixed_list_of_layer_flax_module_and_function",
    "tests/test_readme.py::test_readme_example_runs",
    "tests/analyze/test_grad_flow.py::test_matches_plain_autodiff_at_every_layer[kwargs1]",
    "tests/optim/test_train.py::"
    "test_clipping_rescues_an_exploding_tanh_rnn_on_the_adding_problem[1]",
    "tests/optim/test_train.py::"
    "test_clipping_rescues_an_exploding_tanh_rnn_on_the_adding_problem[0]",
    "tests/optim/test_train.py::test_tensorboard_scalars_equal_the_metrics",
    "tests/optim/test_train.py::test_same_seed_same_metrics_and_resume_is_bit_identical",
    "tests/analyze/test_linen.py::test_module_chain_layers_equal_hand_split",
    "tests/analyze/test_linen.py::test_module_grad_norms_equal_jax_grad_at_every_call",
    "tests/experiments/test_demo.py::test_same_seed_same_numbers",
    "tests/experiments/test_demo.py::test_cli_writes_json_png_and_pdf",
    "tests/analyze/test_nnx.py::test_sequential_every_analyzer_equals_hand_split_float64",
    "tests/analyze/test_any_model.py::test_jgrad_mlp_matches_a_loop_of_jax_grad",
    "tests/analyze/test_norm_steps.py::"
    "test_lanczos_top_is_exact_with_full_steps_and_a_lower_bound_before",
    "tests/analyze/test_sweeps.py::test_output_spectra_equal_numpy_svd_of_jacrev",
    "tests/analyze/test_repeat.py::test_pull_rows_spectrum_matches_input_output_spectrum_float64",
    "tests/analyze/test_repeat.py::test_public_spectrum_of_stacked_net_float64",
    "tests/analyze/test_rank.py::test_a_non_finite_product_is_reported_not_compressed_away",
    "tests/analyze/test_rank.py::test_derivatives_are_those_of_the_uncompressed_sweep",
    "tests/analyze/test_sweeps.py::test_output_sweep_equals_per_layer_products_and_jacrev"
    "[True-kw0]",
    "tests/analyze/test_rnn.py::test_overflow_warns_naming_first_nonfinite_step",
    # each compiles a phase-diagram sweep (5-6 s); tests/theory/test_phase.py keeps one
    "jgrad/theory/_phase.py::jgrad.theory._phase.phase_diagram",
    "jgrad/theory/_phase.py::jgrad.theory._phase.phase_probe",
    # the 40 slowest of the fast tier on 2 cores (3-16 s each, mostly compiling)
    "tests/experiments/test_demo.py::test_default_demo_meets_the_textbook_predictions",
    "tests/analyze/test_linen.py::test_sequential_jacobians_and_spectra_equal_jacrev_and_numpy",
    "tests/analyze/test_repeat_public.py::test_layer_jacobians_and_products_equal_default_layout_float64[relu]",
    "tests/analyze/test_linen.py::test_nonfinite_is_flagged_at_the_call",
    "tests/rnn/test_fast.py::test_gradients_equal_plain_autodiff[lstm-masked]",
    "tests/analyze/test_repeat_public.py::test_layer_grad_norms_per_block_equal_default_layout_float64[tanh]",
    "tests/analyze/test_grad_flow.py::test_exactly_zero_gradient_is_minus_inf_not_underflow",
    "tests/analyze/test_grad_flow.py::test_matches_plain_autodiff_at_every_layer[kwargs0]",
    "tests/rnn/test_fast.py::test_gradients_equal_in_float64[vanilla_tanh]",
    "tests/test_readme.py::test_readme_rnn_example_runs",
    "jgrad/analyze/_grad_flow.py::jgrad.analyze._grad_flow.layer_grad_norms",
    "tests/rnn/test_fast.py::test_an_ensemble_under_vmap_equals_each_model[gru]",
    "tests/analyze/test_net_forms.py::test_function_net_keeps_its_tuple_params",
    "tests/analyze/test_rank.py::test_compressed_spectrum_equals_float64_and_the_uncompressed_sweep",
    "tests/analyze/test_sweeps.py::test_deep_push_spans_the_deepest_products_top_subspace[24]",
    "tests/test_bad_input.py::test_integer_like_sizes_build_the_same_network[np.int32]",
    "tests/analyze/test_repeat_public.py::test_layer_grad_norms_per_block_equal_default_layout_float64[residual]",
    "tests/analyze/test_any_model.py::test_coupled_batch_norm_matches_a_loop_of_jax_grad[0]",
    "jgrad/analyze/_module_flow.py::jgrad.analyze._module_flow.module_grad_norms",
    "tests/analyze/test_jacobians.py::test_jacobian_modes_and_chunks_match_jacrev[1]",
    "tests/analyze/test_products.py::test_parallel_products_equal_the_sweeps[37]",
    "tests/analyze/test_repeat.py::test_block_jacobians_match_layer_jacobians_float64[kw0]",
    "tests/analyze/test_input_checks.py::test_layer_grad_norms_takes_a_batch_checked_against_the_params",
    "tests/analyze/test_nonfinite.py::test_all_finite_gives_no_record_and_no_warning[output_norms]",
    "tests/analyze/test_nonfinite.py::test_exploding_network_layer_grad_norms",
    "tests/rnn/test_fast.py::test_gradients_equal_plain_autodiff[vanilla_relu-clip_norm_masked]",
    "tests/analyze/test_repeat_public.py::test_traced_program_size_flat_in_depth",
    "tests/analyze/test_input_checks.py::test_a_batch_to_a_one_example_function_shows_the_vmap[input_output_spectrum]",
    "tests/analyze/test_repeat_public.py::test_layer_grad_norms_per_block_equal_default_layout_float64[relu]",
    "tests/analyze/test_linen.py::test_module_grad_norms_exact_when_squares_underflow",
    "tests/analyze/test_products.py::test_spectrum_density_integrates_to_one",
    "tests/theory/test_mean_field.py::test_doubling_the_quadrature_changes_smooth_results_below_1e_10[tanh]",
    "tests/analyze/test_sweeps.py::test_output_sweep_equals_per_layer_products_and_jacrev[False-kw2]",
    "tests/analyze/test_sweeps.py::test_probe_scale_with_a_probe_row_nearly_orthogonal_to_the_product",
    "tests/analyze/test_any_model.py::test_flax_sequential_matches_a_loop_of_jax_grad",
    "tests/analyze/test_products.py::test_spectrum_stats_against_numpy",
    "tests/analyze/test_repeat.py::test_grad_norms_float32_underflow_against_float64",
    "tests/analyze/test_jacobians.py::test_jacobian_modes_and_chunks_match_jacrev[0]",
    "tests/optim/test_chain.py::test_clip_gives_min_of_norm_and_max_and_records_the_float64_norm",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in SLOW_CASES:
            item.add_marker(pytest.mark.slow)
