{#- Rows where at least one source value did not fit its column type (generated staging models
    list those columns in "_cartridge_invalid_fields"). Generated with severity warn: the value
    is NULL in the model and the count shows in the test result. -#}
{% test cartridge_invalid_values(model) %}
select "_id", "_cartridge_invalid_fields"
from {{ model }}
where cardinality("_cartridge_invalid_fields") > 0
{% endtest %}
