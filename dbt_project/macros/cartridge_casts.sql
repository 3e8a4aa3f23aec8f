{#-
  Guarded casts from a jsonb value to a column type, used by the generated staging models.
  cartridge_valid(v, type): true when v is SQL/JSON null or converts to `type`;
  cartridge_cast(v, type): the converted value, or NULL when it does not convert (never an error).
  A value that does not convert is listed in the row's "_cartridge_invalid_fields".
-#}

{% macro _cartridge_text(v) -%}
({{ v }} #>> '{}')
{%- endmacro %}

{% macro _cartridge_convertible(v, type) -%}
{%- set t = type | lower -%}
{%- set txt = _cartridge_text(v) -%}
{%- set num = "'^\\s*[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?\\s*$'" -%}
{%- set int = "'^\\s*[-+]?[0-9]{1,19}(\\.0*)?\\s*$'" -%}
{%- set ts = "'^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,9})?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$'" -%}
{%- set dt = "'^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$'" -%}
{%- set uuid = "'^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$'" -%}
{%- if t in ('text', 'jsonb') -%}
true
{%- elif t in ('integer', 'bigint') -%}
{%- set range = '-2147483648 and 2147483647' if t == 'integer' else '-9223372036854775808 and 9223372036854775807' -%}
(case jsonb_typeof({{ v }})
  when 'number' then ({{ v }})::numeric = trunc(({{ v }})::numeric) and ({{ v }})::numeric between {{ range }}
  when 'string' then {{ txt }} ~ {{ int }} and {{ txt }}::numeric between {{ range }}
  else false end)
{%- elif t == 'numeric' -%}
(case jsonb_typeof({{ v }}) when 'number' then true when 'string' then {{ txt }} ~ {{ num }} else false end)
{%- elif t == 'double precision' -%}
{#- a JSON number always is a numeric; double precision also needs it within its range -#}
(case jsonb_typeof({{ v }})
  when 'number' then abs(({{ v }})::numeric) = 0 or abs(({{ v }})::numeric) between 4.9e-324 and 1.7976931348623157e308
  when 'string' then {{ txt }} ~ {{ num }} and (abs({{ txt }}::numeric) = 0 or abs({{ txt }}::numeric) between 4.9e-324 and 1.7976931348623157e308)
  else false end)
{%- elif t == 'boolean' -%}
(jsonb_typeof({{ v }}) = 'boolean')
{%- elif t in ('timestamptz', 'timestamp', 'timestamp without time zone') -%}
(jsonb_typeof({{ v }}) = 'string' and {{ txt }} ~ {{ ts }} and left({{ txt }}, 4) <> '0000')
{%- elif t == 'date' -%}
(jsonb_typeof({{ v }}) = 'string' and {{ txt }} ~ {{ dt }} and left({{ txt }}, 4) <> '0000')
{%- elif t == 'uuid' -%}
(jsonb_typeof({{ v }}) = 'string' and {{ txt }} ~ {{ uuid }})
{%- else -%}
{{ exceptions.raise_compiler_error("cartridge_cast: unsupported type " ~ type) }}
{%- endif -%}
{%- endmacro %}

{% macro cartridge_valid(v, type) -%}
({{ v }} is null or jsonb_typeof({{ v }}) = 'null' or {{ _cartridge_convertible(v, type) }})
{%- endmacro %}

{% macro cartridge_cast(v, type) -%}
{%- set t = type | lower -%}
{%- if t == 'jsonb' -%}
nullif({{ v }}, 'null'::jsonb)
{%- elif t == 'text' -%}
{{ _cartridge_text(v) }}
{%- elif t in ('integer', 'bigint') -%}
case when {{ _cartridge_convertible(v, type) }} then {{ _cartridge_text(v) }}::numeric::{{ t }} end
{%- elif t == 'timestamp' -%}
case when {{ _cartridge_convertible(v, type) }} then {{ _cartridge_text(v) }}::timestamptz end
{%- else -%}
case when {{ _cartridge_convertible(v, type) }} then {{ _cartridge_text(v) }}::{{ t }} end
{%- endif -%}
{%- endmacro %}

{#-
  cartridge_fence(): `offset 0` when the calling model is materialized as a table (or
  incremental), nothing for a view. The fence stops PostgreSQL from inlining a CTE into the next
  one, so each JSON path and each guarded cast is evaluated once per row instead of once per
  reference; a view keeps no fence, so filters on it still reach the raw table's indexes.
-#}
{% macro cartridge_fence() -%}
{%- if config.get('materialized', 'view') != 'view' -%}offset 0{%- endif -%}
{%- endmacro %}
