// The types a dashboard JSON is checked against (see check.mjs): Grafana's dashboard model
// and panel options from @grafana/schema, made JSON-shaped.

import type { Dashboard as RawDashboard } from "@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen";
import type { DataQuery, DataSourceRef } from "@grafana/schema";
import type * as stat from "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen";
import type * as timeseries from "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen";
import type * as table from "@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen";
import type * as bargauge from "@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen";
import type * as gauge from "@grafana/schema/dist/esm/raw/composable/gauge/panelcfg/x/GaugePanelCfg_types.gen";
import type * as barchart from "@grafana/schema/dist/esm/raw/composable/barchart/panelcfg/x/BarChartPanelCfg_types.gen";
import type * as piechart from "@grafana/schema/dist/esm/raw/composable/piechart/panelcfg/x/PieChartPanelCfg_types.gen";
import type * as text from "@grafana/schema/dist/esm/raw/composable/text/panelcfg/x/TextPanelCfg_types.gen";

/**
 * A type as it appears in JSON. The generated types use TypeScript enums, and a JSON string
 * such as "palette-classic" is not assignable to a string enum: each string enum becomes the
 * union of its values (`${Enum}`). Numeric enums stay as they are (their values are numbers
 * in JSON too, and TypeScript accepts exactly the member values).
 */
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

/** Grafana's classic dashboard model (the `Dashboard` kind, schemaVersion 4x). */
export type Dashboard = Json<RawDashboard>;

/**
 * A Prometheus query target, after Grafana's PrometheusDataQuery kind. @grafana/schema does
 * not ship the Prometheus data source's types, so they are written out here.
 */
export interface PromQuery extends Omit<DataQuery, "datasource"> {
  datasource?: DataSourceRef;
  expr: string;
  editorMode?: "code" | "builder";
  exemplar?: boolean;
  format?: "time_series" | "table" | "heatmap";
  hinting?: boolean;
  instant?: boolean;
  interval?: string;
  intervalFactor?: number;
  intervalMs?: number;
  legendFormat?: string;
  range?: boolean;
}

/** No keys at all: for plugins without custom field config. */
type None = Record<string, never>;

/**
 * Per panel plugin: its `options` and its `fieldConfig.defaults.custom`. Top-level keys are
 * optional (Grafana fills the plugin's defaults); what is present must match.
 */
export interface PanelKinds {
  stat: { options: stat.Options; custom: None };
  timeseries: { options: timeseries.Options; custom: timeseries.FieldConfig };
  table: { options: table.Options; custom: table.FieldConfig };
  bargauge: { options: bargauge.Options; custom: None };
  gauge: { options: gauge.Options; custom: None };
  barchart: { options: barchart.Options; custom: barchart.FieldConfig };
  piechart: { options: piechart.Options; custom: piechart.FieldConfig };
  text: { options: text.Options; custom: None };
}

export type PanelOptions<K extends keyof PanelKinds> = Partial<Json<PanelKinds[K]["options"]>>;
export type PanelCustom<K extends keyof PanelKinds> = Partial<Json<PanelKinds[K]["custom"]>>;
export type Target = Json<PromQuery>;
