/** The smallest thing both drivers can do inside an open transaction: run one parametrised statement. */
export interface QueryRunner {
  query<Row = Record<string, unknown>>(
    sql: string,
    params?: readonly unknown[],
  ): Promise<{ rows: Row[]; affectedRows: number | undefined }>;
}
