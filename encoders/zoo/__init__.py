"""Model zoos stored as Hugging Face ``datasets`` folders: INR (SIREN) zoos and CNN zoos.

* :func:`make_inr_zoo` fits a SIREN (:class:`Siren`, DWSNets conventions by default) to every image
  of a source; :func:`make_cnn_zoo` trains small CNNs of random architectures (:func:`build_cnn`)
  with checkpoints. Both write resumable shards and a manifest (:mod:`encoders.zoo.store`).
* :func:`load_zoo` reads a complete zoo folder into a :class:`Zoo` (records + metadata; networks
  as modules, stacked weights, splits).
* :func:`load_dwsnets_zoo`, :func:`load_nfn_zoo`, :func:`load_state_dict_folder` read published
  SIREN zoos; :func:`load_images` reads offline or Hugging Face image datasets.
"""

from encoders.zoo.cnn import Residual, architecture_id, build_cnn, sample_cnn_spec
from encoders.zoo.cnn_train import TrainHparams, sample_hparams, train_cnn
from encoders.zoo.cnn_zoo import make_cnn_zoo
from encoders.zoo.images import load_hf_images, load_images
from encoders.zoo.inr_fit import InrConfig, SirenFitter, coordinate_grid, fit_sirens, psnr, render_sirens
from encoders.zoo.inr_zoo import make_inr_zoo
from encoders.zoo.public import load_dwsnets_zoo, load_nfn_zoo, load_state_dict_folder
from encoders.zoo.records import record_state_dict, stack_params
from encoders.zoo.siren import Sine, Siren
from encoders.zoo.splits import assign_splits, derive_seed
from encoders.zoo.zoo import Zoo, load_zoo

__all__ = [
    "InrConfig", "Residual", "Sine", "Siren", "SirenFitter", "TrainHparams", "Zoo", "architecture_id",
    "assign_splits", "build_cnn", "coordinate_grid", "derive_seed", "fit_sirens", "load_dwsnets_zoo",
    "load_hf_images", "load_images", "load_nfn_zoo", "load_state_dict_folder", "load_zoo", "make_cnn_zoo",
    "make_inr_zoo", "psnr", "record_state_dict", "render_sirens", "sample_cnn_spec", "sample_hparams",
    "stack_params", "train_cnn",
]
