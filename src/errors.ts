/**
 * Typed errors. Every error names the file, tensor, layer or option it is about, so a notebook
 * user sees what to fix without reading a stack trace.
 * @module
 */

/** Base class of every error quantlab throws on purpose. */
export class QuantlabError extends Error {
  /** Creates an error with a message; `name` is the subclass name. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A file is malformed (bad header, offsets, dtype, byte counts). `file` names it. */
export class FormatError extends QuantlabError {
  /** The file path (or "<memory>"). */
  readonly file: string;
  /** Creates a format error about `file`. */
  constructor(file: string, message: string, options?: ErrorOptions) {
    super(`${file}: ${message}`, options);
    this.file = file;
  }
}

/** A config.json lacks a field or holds a bad value. */
export class ConfigError extends QuantlabError {}

/** A config.json field is missing, of the wrong type or out of range. `field` names it. */
export class ConfigFieldError extends ConfigError {
  /** The config file. */
  readonly file: string;
  /** The field, e.g. "num_hidden_layers" ("(root)" for the whole file). */
  readonly field: string;
  /** Creates an error about `field` of `file`. */
  constructor(file: string, field: string, message: string) {
    super(`${file}: config field "${field}" ${message}`);
    this.file = file;
    this.field = field;
  }
}

/** An architecture, dtype, file kind or feature is not supported. */
export class UnsupportedError extends QuantlabError {}

/** A user option is invalid. `option` names it. */
export class OptionError extends QuantlabError {
  /** The option's name, e.g. "bits" or "groupSize". */
  readonly option: string;
  /** Creates an option error about `option`. */
  constructor(option: string, message: string) {
    super(`option ${option}: ${message}`);
    this.option = option;
  }
}

/** Something must be downloaded but the hub cannot be reached. */
export class OfflineError extends QuantlabError {}

/** A tensor holds NaN or Inf where finite values are required. */
export class NonFiniteError extends QuantlabError {}

/** The results ledger file cannot be read or written. `file` names it. */
export class LedgerError extends QuantlabError {
  /** The ledger file. */
  readonly file: string;
  /** Creates a ledger error about `file`. */
  constructor(file: string, message: string, options?: ErrorOptions) {
    super(`ledger ${file}: ${message}`, options);
    this.file = file;
  }
}

/** A tensor is not what the config implies. `tensor` names it; subclasses say which way. */
export class TensorMismatchError extends FormatError {
  /** The tensor's name, e.g. "model.layers.0.self_attn.q_proj.weight". */
  readonly tensor: string;
  /** Creates an error about `tensor` in `file`. */
  constructor(file: string, tensor: string, message: string) {
    super(file, message);
    this.tensor = tensor;
  }
}

/** A tensor the config implies is absent from the checkpoint. */
export class MissingTensorError extends TensorMismatchError {}

/** The checkpoint holds a tensor the config does not account for (it would be ignored). */
export class UnexpectedTensorError extends TensorMismatchError {}

/** A tensor's shape differs from the one the config implies. */
export class TensorShapeError extends TensorMismatchError {}

/** A tensor's dtype cannot hold what the model reads from it (e.g. I32 for a float weight). */
export class TensorDtypeError extends TensorMismatchError {}

/**
 * A path that must be a regular file (or a folder) is something else: a folder, FIFO, socket or
 * device, a symlink loop or a dangling link, or unreadable. `file` names the path. FIFOs and
 * devices are refused before they are opened, so a read never blocks.
 */
export class FileKindError extends FormatError {}

/** A layer Hessian `H` is not a valid Σ XᵀX: not symmetric, or a negative diagonal entry. */
export class HessianError extends QuantlabError {}

/**
 * A resume folder cannot be trusted for this run: it belongs to another run (model, recipe,
 * calibration or code version differ). `file` names the file that says so.
 */
export class ResumeError extends QuantlabError {
  /** The checkpoint or run file. */
  readonly file: string;
  /** Creates a resume error about `file`. */
  constructor(file: string, message: string) {
    super(`${file}: ${message}`);
    this.file = file;
  }
}
