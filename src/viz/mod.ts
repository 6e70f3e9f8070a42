/**
 * Plots, tables and progress for quantlab (re-exported as `plot` from the package's mod.ts).
 *
 * ```ts
 * import { plot } from "../mod.ts";
 * plot.layerErrors(qm.report);                 // a cell's last expression renders in Jupyter
 * await plot.show(plot.pplVsBits(rows));       // explicit; outside Jupyter writes out/plots/*.html
 * plot.resultsTable(rows);                     // HTML in Jupyter, String(table) in terminals
 * const p = plot.progress("calibration", 128); p.tick(); await p.done();
 * ```
 * @module
 */
export {
  channelMagnitude,
  type ChannelMagnitudeOptions,
  errorHeatmap,
  type ErrorHeatmapOptions,
  type Figure,
  histogram,
  layerErrors,
  type LayerErrorsOptions,
  type LayerRecord,
  medianAbs,
  outlierChannels,
  type PplRow,
  pplVsBits,
  type PplVsBitsOptions,
  type QuantReport,
  type Trace,
  weightHistogram,
  type WeightHistogramOptions,
  type Weights,
} from "./figures.ts";
export {
  figureBundle,
  figureDocument,
  figureHtml,
  isJupyter,
  jupyter,
  JUPYTER_DISPLAY,
  type JupyterApi,
  type MimeBundle,
  plotlyJs,
  plotlyPath,
  resetPlotlyInlining,
  show,
  type ShowOptions,
  withDisplay,
} from "./display.ts";
export {
  type ResultRow,
  type ResultsTable,
  resultsTable,
  type ResultsTableOptions,
} from "./table.ts";
export { paretoFront, type ParetoOptions, paretoPlot, type ParetoPoint } from "./pareto.ts";
export {
  type Progress,
  progress,
  progressCallback,
  type ProgressEvent,
  progressLine,
  type ProgressOptions,
} from "./progress.ts";
export { type DistanceRecord, layerDistance, sqnrPerLayer, type SqnrRecord } from "./wa_figures.ts";
export { type NeedleGrid, needleHeatmap } from "./needle_heatmap.ts";
export {
  type TaskBar,
  taskBarRows,
  taskBars,
  type TaskBarsOptions,
  type TaskResultLike,
} from "./task_bars.ts";
export { type ChatComparison, chatSideBySide, type ChatView } from "./chat_view.ts";
