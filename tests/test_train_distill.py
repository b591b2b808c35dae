"""Knowledge distillation in the trainer (``distill_from``): the loss against a closed form and its gradient, and
runs of ``multispike train`` with a frozen teacher on real (digits) data."""
import math

import pytest
import torch
import torch.nn.functional as F

from multispike.cli.main import main
from multispike.train import distillation_loss, load_checkpoint
from multispike.train.config import ConfigError, TrainConfig

from conftest import DIGITS_ARGS as DIGITS


def _by_hand(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> float:
    total = 0.0
    for zs, zt in zip(student.tolist(), teacher.tolist()):
        ps = [math.exp(v / tau) for v in zs]
        pt = [math.exp(v / tau) for v in zt]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    return tau * tau * total / len(student)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_distillation_loss_is_tau_squared_kl_of_the_softmaxes(tau):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    assert distillation_loss(student, teacher, tau).item() == pytest.approx(_by_hand(student, teacher, tau), rel=1e-6)
    assert distillation_loss(teacher, teacher, tau).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_gradient_is_tau_times_the_softmax_difference():
    # d/dz_s [τ²·KL(p_t ‖ p_s)] / B = τ·(p_s − p_t) / B: the τ² factor keeps the gradient's size as τ grows
    tau = 3.0
    g = torch.Generator().manual_seed(1)
    student = torch.randn(4, 6, generator=g, requires_grad=True)
    teacher = torch.randn(4, 6, generator=g)
    distillation_loss(student, teacher, tau).backward()
    expected = tau * (F.softmax(student.detach() / tau, -1) - F.softmax(teacher / tau, -1)) / 4
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-6)


def test_time_major_logits_are_distilled_through_their_time_mean():
    g = torch.Generator().manual_seed(2)
    seq = torch.randn(3, 4, 5, generator=g)
    teacher = torch.randn(4, 5, generator=g)
    torch.testing.assert_close(distillation_loss(seq, teacher, 2.0), distillation_loss(seq.mean(0), teacher, 2.0))


def test_logits_of_other_shapes_or_a_bad_temperature_are_refused():
    with pytest.raises(ValueError, match="same classes"):
        distillation_loss(torch.zeros(4, 10), torch.zeros(4, 100))
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.zeros(4, 10), torch.zeros(4, 10), temperature=0.0)


@pytest.mark.parametrize("kwargs", [{"distill_weight": 0.0}, {"distill_weight": 1.5}, {"distill_temperature": 0.0},
                                    {"distill_temperature": float("nan")}])
def test_config_refuses_distillation_settings_out_of_range(kwargs):
    with pytest.raises(ConfigError, match="distill_"):
        TrainConfig(model="vgg_small", distill_from="teacher", **kwargs).validate()


def test_a_student_identical_to_its_teacher_gets_no_gradient_from_pure_distillation(digits_relu_run, tmp_path,
                                                                                     capsys):
    # the student starts from the teacher's weights and keeps BN in eval mode, so both compute the same logits: with
    # distill_weight 1 the loss is KL = 0 with zero gradient, and three SGD steps at lr 0.1 leave every weight as it was
    out = tmp_path / "student"
    teacher_run = str(digits_relu_run)
    assert main(["train", "--neuron", "relu", "--init-weights", teacher_run, "--distill-from", teacher_run,
                 "--distill-weight", "1", "--freeze-bn", "--max-steps", "3", "--epochs", "1", "--subset", "96",
                 "--opt", "sgd", "--lr", "0.1", "--sched", "constant", "--momentum", "0", "--weight-decay", "0",
                 *DIGITS, "--out", str(out)]) == 0
    assert "distillation from" in capsys.readouterr().out
    teacher = load_checkpoint(digits_relu_run).model_state
    student = load_checkpoint(out)
    assert set(student.model_state) == set(teacher)          # the teacher is not saved with the student
    for key, value in teacher.items():
        torch.testing.assert_close(student.model_state[key], value, rtol=0, atol=1e-7, msg=key)
    assert student.meta["config"]["distill_from"] == str(digits_relu_run)


def test_a_quantized_student_learns_from_the_teacher_and_the_labels(digits_relu_run, tmp_path):
    out = tmp_path / "qcfs"
    assert main(["train", "--neuron", "qcfs", "--levels", "4", "--init-weights", str(digits_relu_run), "--distill-from",
                 str(digits_relu_run), "--distill-weight", "0.7", "--distill-temperature", "2", "--max-steps", "3",
                 "--epochs", "1", "--subset", "96", "--opt", "sgd", "--lr", "0.05", "--sched", "constant",
                 *DIGITS, "--out", str(out)]) == 0
    teacher = load_checkpoint(digits_relu_run).model_state
    student = load_checkpoint(out).model_state
    moved = [k for k, v in teacher.items() if "weight" in k and not torch.equal(student[k], v)]
    assert moved, "the distilled QCFS twin did not train"


def test_a_teacher_trained_on_other_normalisation_is_refused(digits_relu_run, tmp_path, capsys):
    code = main(["train", "--neuron", "relu", "--distill-from", str(digits_relu_run), "--no-normalize", "--epochs", "1",
                 "--subset", "64", *DIGITS, "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code != 0 and "teacher" in err and "normalis" in err


def test_a_missing_teacher_is_refused_naming_the_option_and_path(tmp_path, capsys):
    code = main(["train", "--neuron", "relu", "--distill-from", str(tmp_path / "no_such_run"), "--epochs", "1",
                 "--subset", "64", *DIGITS, "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code != 0 and "distill_from" in err and "no_such_run" in err
