"""The demo's training loop (``make demo`` runs it on MNIST-5k with the shipped rule)."""

import torch

from l2o.demo import demo_model, train_classifier


def test_train_classifier_times_the_first_step_apart_and_reports_test_metrics():
    torch.manual_seed(0)
    images, labels = torch.randn(64, 1, 4, 4), torch.randint(10, (64,))
    model = demo_model(16)
    curve = train_classifier("Adam", model, lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
                             (images[:48], labels[:48]), (images[48:], labels[48:]), steps=25, batch_size=16, seed=0)
    assert curve.steps == [10, 20, 25] and len(curve.train_loss) == 3
    assert 0 < curve.first_step_seconds <= curve.seconds
    assert 0 <= curve.test_accuracy <= 1 and curve.test_loss > 0
    assert curve.train_loss[-1] < curve.train_loss[0], "Adam at 1e-2 should fit 48 samples"


def test_demo_compares_with_adam_at_1e_3_and_with_adam_tuned_on_training_loss(tmp_path, monkeypatch):
    from l2o import demo

    monkeypatch.setenv("L2O_COMPILE", "0")  # the reference step: no compile minute in a unit test
    curves = demo.run_demo("digits", steps=30, batch_size=32, out=tmp_path)
    names = [c.name for c in curves]
    assert names[0] == "NeuralGraphOpt" and names[1].startswith("Adam(lr=0.001)")
    tuned = curves[-1]
    assert tuned.name.startswith("Adam tuned") or tuned.name.endswith("also tuned")
    assert tuned.train_loss[-1] <= curves[1].train_loss[-1]
    assert (tmp_path / "demo.png").exists() and (tmp_path / "demo.json").exists()
